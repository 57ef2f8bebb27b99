"""The workflow spec as frozen pydantic models, with the lookups the executor needs."""

from __future__ import annotations

import copy
import hashlib
import json
import keyword
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from chiffon.events.limits import (
    CAPABILITY_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_VERSION_MAX,
)

from .durations import parse_duration
from .errors import InputError, format_path
from .expressions import JSON_CONSTANTS, Expression, ExpressionError, compile_expression
from .templates import Template, TemplateError, parse_template
from .types import FieldTypeError, parse_field_type, validate_value

END = "END"
START = "START"
RESERVED_NODE_IDS = frozenset({END, START})
BUILTIN_VARIABLES: dict[str, str] = {"approved": "boolean", "approval_comment": "string"}
NODE_TYPES: tuple[str, ...] = ("llm", "approval", "agent", "set")
DEFAULT_TIMEOUT_S = 600.0

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_CAPABILITY = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")


# --- field validators ----------------------------------------------------------------


def _at_most(value: str, limit: int, what: str) -> None:
    """Names are as long as the columns and events that hold them allow, no longer."""
    if len(value) > limit:
        raise ValueError(f"{what} is too long ({len(value)} characters; the limit is {limit})")


def _slug(value: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(
            f"invalid name {value!r}: use lowercase letters, digits, '-' and '_' "
            f"(start with a letter or digit, at most {WORKFLOW_NAME_MAX_CHARS} characters)"
        )
    _at_most(value, WORKFLOW_NAME_MAX_CHARS, "name")
    return value


def _node_id(value: str) -> str:
    _at_most(value, NODE_ID_MAX_CHARS, "node id")
    if not _IDENT.match(value):
        raise ValueError(
            f"invalid node id {value!r}: use letters, digits and '_', not starting with a digit"
        )
    if value in RESERVED_NODE_IDS:
        raise ValueError(f"{value!r} is reserved and cannot be a node id")
    return value


def _var_name(value: str) -> str:
    _at_most(value, VARIABLE_NAME_MAX_CHARS, "name")
    if not _IDENT.match(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits and '_', not starting with a digit"
        )
    if keyword.iskeyword(value) or value in JSON_CONSTANTS:
        raise ValueError(f"{value!r} is a reserved word and cannot be a variable name")
    return value


def _field_type(value: str) -> str:
    try:
        return str(parse_field_type(value))
    except FieldTypeError as exc:
        raise ValueError(str(exc)) from None


class TextError(ValueError):
    """A template or condition that does not compile (the rest of the spec may be fine)."""


# Set in a validation's context: templates and conditions are not compiled. After a
# first pass failed on those alone, a second pass so relaxed runs the cross-reference
# and graph checks too, so one report names every problem of the file.
SKIP_TEXTS = "chiffon.skip_texts"


def _skipping_texts(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(SKIP_TEXTS))


def _compiles(
    compile_text: Callable[[str], object], error: type[Exception]
) -> Callable[[str, ValidationInfo], str]:
    """An after-validator: the text must compile (unless the context skips texts)."""

    def check(value: str, info: ValidationInfo) -> str:
        if not _skipping_texts(info):
            try:
                compile_text(value)
            except error as exc:
                raise TextError(str(exc)) from None
        return value

    return check


_template = _compiles(parse_template, TemplateError)
_expression = _compiles(compile_expression, ExpressionError)


def _task(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    if not _skipping_texts(info):
        for loc, text in _strings(value, ()):
            try:
                parse_template(text)
            except TemplateError as exc:
                raise TextError(f"in {format_path(loc)}: {exc}") from None
    return value


def _model_name(value: str) -> str:
    _at_most(value, MODEL_NAME_MAX_CHARS, "model")
    if not value.strip() or any(c.isspace() for c in value):
        raise ValueError(f"invalid model {value!r}: expected a provider/model string")
    return value


def _capability(value: str) -> str:
    _at_most(value, CAPABILITY_MAX_CHARS, "capability")
    if not _CAPABILITY.match(value):
        raise ValueError(
            f"invalid capability {value!r}: use lowercase letters, digits, '_', '-' and '.'"
        )
    return value


def _non_empty(value: Any) -> Any:
    if not value:
        raise ValueError("must not be empty")
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _strings(value: Any, loc: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    """Every string inside a JSON-like value, with its relative path."""
    if isinstance(value, str):
        return [(loc, value)]
    if isinstance(value, Mapping):
        return [pair for k, v in value.items() for pair in _strings(v, (*loc, k))]
    if isinstance(value, (list, tuple)):
        return [pair for i, v in enumerate(value) for pair in _strings(v, (*loc, i))]
    return []


Slug = Annotated[str, AfterValidator(_slug)]
NodeId = Annotated[str, AfterValidator(_node_id)]
VarName = Annotated[str, AfterValidator(_var_name)]
TypeName = Annotated[str, AfterValidator(_field_type)]
TemplateText = Annotated[str, AfterValidator(_template)]
ExpressionText = Annotated[str, AfterValidator(_expression)]
ModelName = Annotated[str, AfterValidator(_model_name)]
Capability = Annotated[str, AfterValidator(_capability)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
OnError = Literal["fail", "continue"]
OutputFields = Annotated[dict[VarName, TypeName], AfterValidator(_non_empty)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, protected_namespaces=()
    )


# --- settings --------------------------------------------------------------------------


class Backoff(_Model):
    """Delay before retry ``n`` (1-based): ``min(initial * multiplier**(n-1), max)``."""

    initial: Duration = 1.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    max: Duration = 60.0


class RetryPolicy(_Model):
    """``attempts`` counts the first try: 1 means no retry."""

    attempts: int = Field(default=1, ge=1, le=20)
    backoff: Backoff = Backoff()

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the second attempt)."""
        b = self.backoff
        return float(min(b.initial * b.multiplier ** max(retry - 1, 0), b.max))


class Defaults(_Model):
    model: ModelName | None = None
    fallbacks: tuple[ModelName, ...] | None = None
    retry: RetryPolicy | None = None
    timeout: PositiveDuration | None = None
    on_error: OnError | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)


class Budget(_Model):
    max_usd: float = Field(gt=0)


class InputSpec(_Model):
    type: TypeName
    default: Any = None
    description: str | None = None

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @model_validator(mode="after")
    def _default_matches_type(self) -> InputSpec:
        if not self.required and self.default is not None:
            try:
                validate_value(self.type, self.default)
            except ValueError as exc:
                raise ValueError(f"default does not match type: {exc}") from None
        return self


# --- nodes -----------------------------------------------------------------------------


class _NodeBase(_Model):
    id: NodeId
    description: str | None = None


class LlmNode(_NodeBase):
    type: Literal["llm"]
    model: ModelName | None = None
    fallbacks: tuple[ModelName, ...] | None = None
    system: TemplateText | None = None
    prompt: TemplateText
    output: OutputFields | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    retry: RetryPolicy | None = None
    timeout: PositiveDuration | None = None
    on_error: OnError | None = None


class ApprovalNode(_NodeBase):
    type: Literal["approval"]
    message: TemplateText
    on_reject: str = "fail"


class AgentNode(_NodeBase):
    type: Literal["agent"]
    requires: tuple[Capability, ...] = ()
    task: Annotated[dict[str, Any], AfterValidator(_task)]
    output: OutputFields | None = None
    retry: RetryPolicy | None = None
    timeout: PositiveDuration | None = None
    on_error: OnError | None = None


class SetNode(_NodeBase):
    type: Literal["set"]
    values: Annotated[dict[VarName, ExpressionText], AfterValidator(_non_empty)]


Node: TypeAlias = Annotated[
    LlmNode | ApprovalNode | AgentNode | SetNode, Field(discriminator="type")
]
AnyNode: TypeAlias = LlmNode | ApprovalNode | AgentNode | SetNode


class Edge(_Model):
    """``from`` one node, or several (a join); ``to`` a node or ``END``."""

    from_: Annotated[tuple[str, ...], BeforeValidator(_one_or_many), AfterValidator(_non_empty)] = (
        Field(alias="from")
    )
    to: str
    when: ExpressionText | None = None
    max_iterations: int | None = Field(default=None, ge=1, le=10_000)

    @property
    def sources(self) -> tuple[str, ...]:
        return self.from_

    @property
    def is_join(self) -> bool:
        return len(self.from_) > 1

    @property
    def condition(self) -> Expression | None:
        return None if self.when is None else compile_expression(self.when)


# --- the spec --------------------------------------------------------------------------


class WorkflowSpec(_Model):
    """A validated workflow. Build it with ``load_spec`` or ``spec_from_dict``."""

    name: Slug
    version: int = Field(ge=1, le=WORKFLOW_VERSION_MAX)
    description: str | None = None
    inputs: dict[VarName, InputSpec] = {}
    defaults: Defaults = Defaults()
    budget: Budget | None = None
    outputs: tuple[VarName, ...] | None = None
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = ()

    _by_id: dict[str, AnyNode] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        for node in self.nodes:
            self._by_id.setdefault(node.id, node)

    @model_validator(mode="after")
    def _check_graph(self) -> WorkflowSpec:
        from .validate import check_spec  # validate.py reads this module's classes

        issues = check_spec(self)
        if issues:
            from .errors import SpecError

            raise SpecError(issues)
        return self

    # -- identity --

    def canonical_json(self) -> str:
        """Stable JSON of what the author wrote (sorted keys, durations in seconds)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        """``sha256`` hex digest of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    # -- graph --

    def node(self, node_id: str) -> AnyNode:
        """The node with this id; ``KeyError`` if there is none."""
        try:
            return self._by_id[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in workflow {self.name!r}") from None

    def declares_entry(self) -> bool:
        """Whether an edge leaves ``START``: then the entries are declared, not inferred."""
        return any(START in e.from_ for e in self.edges)

    def entry_nodes(self) -> tuple[str, ...]:
        """Where a run starts, in file order: the targets of ``{from: START, to: ...}``
        edges when the file has any (as in LangGraph, so the first step can also be a
        loop's target); else the nodes with no incoming edge (``on_reject`` counts as one)."""
        if self.declares_entry():
            return tuple(
                dict.fromkeys(e.to for e in self.edges if e.from_ == (START,) and e.to in self._by_id)
            )
        targets = {e.to for e in self.edges}
        targets |= {
            n.on_reject for n in self.nodes if isinstance(n, ApprovalNode) and n.on_reject != "fail"
        }
        return tuple(n.id for n in self.nodes if n.id not in targets)

    def outgoing(self, node_id: str) -> tuple[Edge, ...]:
        """Edges that list ``node_id`` among their sources, in file order."""
        return tuple(e for e in self.edges if node_id in e.from_)

    def incoming(self, node_id: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.to == node_id)

    # -- state --

    def output_fields(self, node: AnyNode | str) -> dict[str, str]:
        """The typed fields a node writes (``set`` nodes write untyped values: see ``writes``)."""
        n = self._resolve(node)
        if isinstance(n, LlmNode):
            return dict(n.output) if n.output else {n.id: "string"}
        if isinstance(n, AgentNode):
            return dict(n.output) if n.output else {n.id: "object"}
        if isinstance(n, ApprovalNode):
            return dict(BUILTIN_VARIABLES)
        return {}

    def writes(self, node: AnyNode | str) -> tuple[str, ...]:
        """State keys a node writes when it completes."""
        n = self._resolve(node)
        if isinstance(n, SetNode):
            return tuple(n.values)
        return tuple(self.output_fields(n))

    def state_keys(self) -> tuple[str, ...]:
        """Every key the state can hold: inputs, then each node's writes, in file order."""
        keys = dict.fromkeys(self.inputs)
        for n in self.nodes:
            keys.update(dict.fromkeys(self.writes(n)))
        return tuple(keys)

    def run_outputs(self) -> tuple[str, ...]:
        """State keys that form the run's result (``outputs``, or every state key)."""
        return self.outputs if self.outputs is not None else self.state_keys()

    def validate_inputs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check run inputs, coerce them to their types and fill defaults; ``InputError``."""
        problems = [
            f"unknown input {k!r}"
            + (f"; inputs are: {', '.join(self.inputs)}" if self.inputs else "")
            for k in values
            if k not in self.inputs
        ]
        result: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            if name in values:
                try:
                    result[name] = validate_value(spec.type, values[name])
                except ValueError as exc:
                    problems.append(f"input {name!r}: {exc}")
            elif spec.required:
                problems.append(f"missing required input {name!r} ({spec.type})")
            else:
                result[name] = copy.deepcopy(spec.default)
        if problems:
            raise InputError(problems)
        return result

    def initial_state(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """A run's first state: every state key as ``None``, then the checked inputs."""
        state: dict[str, Any] = dict.fromkeys(self.state_keys())
        state.update(self.validate_inputs(inputs))
        return state

    # -- effective settings (node value, else ``defaults``, else built-in) --

    def effective_model(self, node: AnyNode | str) -> str | None:
        n = self._resolve(node)
        return (n.model or self.defaults.model) if isinstance(n, LlmNode) else None

    def effective_fallbacks(self, node: AnyNode | str) -> tuple[str, ...]:
        n = self._resolve(node)
        if not isinstance(n, LlmNode):
            return ()
        chosen = n.fallbacks if n.fallbacks is not None else self.defaults.fallbacks
        return chosen or ()

    def effective_retry(self, node: AnyNode | str) -> RetryPolicy:
        """Field by field: the node's ``retry``, over ``defaults.retry``, over 1 attempt."""
        n = self._resolve(node)
        if not isinstance(n, (LlmNode, AgentNode)):
            return RetryPolicy()
        merged: dict[str, Any] = {}
        for layer in (self.defaults.retry, n.retry):
            if layer is not None:
                _deep_merge(merged, layer.model_dump(exclude_unset=True))
        return RetryPolicy.model_validate(merged)

    def effective_timeout(self, node: AnyNode | str) -> float | None:
        """Seconds per attempt; ``None`` for approval and set nodes (no limit)."""
        n = self._resolve(node)
        if not isinstance(n, (LlmNode, AgentNode)):
            return None
        for value in (n.timeout, self.defaults.timeout):
            if value is not None:
                return value
        return DEFAULT_TIMEOUT_S

    def effective_on_error(self, node: AnyNode | str) -> OnError:
        n = self._resolve(node)
        if isinstance(n, (LlmNode, AgentNode)) and n.on_error is not None:
            return n.on_error
        if isinstance(n, (LlmNode, AgentNode)) and self.defaults.on_error is not None:
            return self.defaults.on_error
        return "fail"

    def effective_temperature(self, node: AnyNode | str) -> float | None:
        n = self._resolve(node)
        if not isinstance(n, LlmNode):
            return None
        return n.temperature if n.temperature is not None else self.defaults.temperature

    def effective_max_tokens(self, node: AnyNode | str) -> int | None:
        n = self._resolve(node)
        if not isinstance(n, LlmNode):
            return None
        return n.max_tokens if n.max_tokens is not None else self.defaults.max_tokens

    def templates(self, node: AnyNode | str) -> dict[str, Template]:
        """The node's parsed templates by field (``prompt``, ``system``, ``message``)."""
        n = self._resolve(node)
        fields: dict[str, str | None] = {}
        if isinstance(n, LlmNode):
            fields = {"system": n.system, "prompt": n.prompt}
        elif isinstance(n, ApprovalNode):
            fields = {"message": n.message}
        return {k: parse_template(v) for k, v in fields.items() if v is not None}

    def set_expressions(self, node: AnyNode | str) -> dict[str, Expression]:
        """A ``set`` node's compiled expressions by state key (empty for other nodes)."""
        n = self._resolve(node)
        if not isinstance(n, SetNode):
            return {}
        return {key: compile_expression(src) for key, src in n.values.items()}

    def _resolve(self, node: AnyNode | str) -> AnyNode:
        return self.node(node) if isinstance(node, str) else node


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
