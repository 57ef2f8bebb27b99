"""Chiffon workflow specs: load, validate and query YAML/JSON workflows (pure, no I/O).

>>> spec = load_spec(open("article.yaml", "rb").read(), filename="article.yaml")
>>> spec.entry_nodes()
('research',)
"""

from .api import load_spec, spec_from_dict
from .durations import parse_duration
from .errors import InputError, SpecError, SpecIssue
from .expressions import Expression, ExpressionError, compile_expression
from .model import WorkflowSpec
from .spec_types import (
    BUILTIN_VARIABLES,
    DEFAULT_TIMEOUT_S,
    END,
    NODE_TYPES,
    AgentNode,
    AnyNode,
    ApprovalNode,
    Backoff,
    Budget,
    Defaults,
    Edge,
    InputSpec,
    LlmNode,
    Node,
    RetryPolicy,
    SetNode,
)
from .templates import (
    Template,
    TemplateError,
    format_value,
    parse_template,
    render_task,
    render_value,
    templated_task,
)
from .types import (
    FieldType,
    FieldTypeError,
    build_output_model,
    output_json_schema,
    parse_field_type,
    validate_value,
)

__all__ = [
    "BUILTIN_VARIABLES",
    "DEFAULT_TIMEOUT_S",
    "END",
    "NODE_TYPES",
    "AgentNode",
    "AnyNode",
    "ApprovalNode",
    "Backoff",
    "Budget",
    "Defaults",
    "Edge",
    "Expression",
    "ExpressionError",
    "FieldType",
    "FieldTypeError",
    "InputError",
    "InputSpec",
    "LlmNode",
    "Node",
    "RetryPolicy",
    "SetNode",
    "SpecError",
    "SpecIssue",
    "Template",
    "TemplateError",
    "WorkflowSpec",
    "build_output_model",
    "compile_expression",
    "format_value",
    "load_spec",
    "output_json_schema",
    "parse_duration",
    "parse_field_type",
    "parse_template",
    "render_task",
    "render_value",
    "templated_task",
    "spec_from_dict",
    "validate_value",
]
