"""The parts of a workflow spec: nodes, edges, defaults, and the checks of one field.

Kept apart from ``model.WorkflowSpec`` so that ``validate`` (the checks across nodes and
edges) reads these classes while ``WorkflowSpec`` runs ``validate`` on itself, with
no import cycle between them.
"""

from __future__ import annotations

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
    ValidationInfo,
    model_validator,
)

from chiffon.events.limits import (
    CAPABILITY_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
)
from chiffon.events.memory import (
    MEMORY_ACCESS_MAX,
    MemoryKey,
    MemoryKeyError,
    check_name,
    check_namespace,
    parse_key,
)

from .durations import parse_duration
from .errors import format_path
from .expressions import JSON_CONSTANTS, Expression, ExpressionError, compile_expression
from .templates import TemplateError, parse_template, templated_task
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
        for loc, text in _strings(templated_task(value), ()):
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


def _percentage(value: Any) -> float:
    """``prefer_local_below``: ``"20%"`` (or ``"20"``) or a number, a percentage 0..100."""
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage such as '20%' or 20, got {value!r}")
    number: float
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a percentage such as '20%' or 20, got {value!r}") from None
    else:
        raise ValueError(f"expected a percentage such as '20%' or 20, got {value!r}")
    if not 0.0 <= number <= 100.0 or number != number:
        raise ValueError(f"a percentage must be between 0% and 100%, got {value!r}")
    return number


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
Percentage = Annotated[float, BeforeValidator(_percentage)]
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
    # The run fails (step_limit) past this many node executions; the server's
    # max_node_executions caps it.
    max_node_executions: int | None = Field(default=None, ge=1)
    # Issue 18: when a budget that applies has less than this share of its hard limit
    # left (a percentage, "20%" or 20), an llm node tries its first zero-cost fallback
    # first.
    prefer_local_below: Percentage | None = None


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


# --- memory (issue 20) ---------------------------------------------------------------

MEMORY_VARIABLE_PREFIX = "memory_"
"""A read of ``ns:*:*:last_deploy`` is ``{memory_last_deploy}`` in the node's templates (and
``memory_last_deploy`` in a ``set`` node's expressions): templates take plain names only."""


def _memory_pattern(value: str) -> str:
    try:
        parse_key(value, wildcards=True)
    except MemoryKeyError as exc:
        raise ValueError(str(exc)) from None
    return value


def _memory_checked(check: Callable[[str], str]) -> Callable[[str], str]:
    def run(value: str) -> str:
        try:
            return check(value)
        except MemoryKeyError as exc:
            raise ValueError(str(exc)) from None

    return run


def _unique(value: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for item in value:
        if item in seen:
            raise ValueError(f"{item!r} is listed twice")
        seen.add(item)
    return value


MemoryPattern = Annotated[str, AfterValidator(_memory_pattern)]
MemoryName = Annotated[str, AfterValidator(_memory_checked(check_name))]
MemoryNamespace = Annotated[str, AfterValidator(_memory_checked(check_namespace))]


class MemorySpec(_Model):
    """``memory: {read: [...], write: [...], namespace: ...}`` on a node: the only memory
    the node may touch. ``read``: patterns ``namespace:workflow:node:name`` (workflow and
    node may be ``*``), each read into ``{memory_<name>}``. ``write``: the node's own
    output fields, stored under ``<namespace>:<workflow>:<node>:<field>``; the namespace
    is ``namespace``, else (agent nodes only) the name of the agent that ran the task."""

    namespace: MemoryNamespace | None = None
    read: Annotated[
        tuple[MemoryPattern, ...], Field(max_length=MEMORY_ACCESS_MAX), AfterValidator(_unique)
    ] = ()
    write: Annotated[
        tuple[MemoryName, ...], Field(max_length=MEMORY_ACCESS_MAX), AfterValidator(_unique)
    ] = ()

    @model_validator(mode="after")
    def _declares_something(self) -> MemorySpec:
        if not self.read and not self.write:
            raise ValueError(
                "declare what the node reads or writes: memory: {read: [...], write: [...]}"
            )
        names = [parse_key(p, wildcards=True).name for p in self.read]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"two reads are named {twice[0]!r}: both would be "
                f"{{{MEMORY_VARIABLE_PREFIX}{twice[0]}}}; read one key per name"
            )
        return self

    def patterns(self) -> dict[str, MemoryKey]:
        """The read patterns by the variable they fill (``memory_<name>``)."""
        return {
            MEMORY_VARIABLE_PREFIX + key.name: key
            for key in (parse_key(p, wildcards=True) for p in self.read)
        }


# --- nodes -----------------------------------------------------------------------------


class _NodeBase(_Model):
    id: NodeId
    description: str | None = None
    memory: MemorySpec | None = None


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
    prefer_local_below: Percentage | None = None


class ApprovalNode(_NodeBase):
    type: Literal["approval"]
    message: TemplateText
    on_reject: str = "fail"


class AgentResources(_Model):
    """What an agent node needs of the agent that runs it (each optional)."""

    gpu_vram_gb: float | None = Field(default=None, gt=0, le=100_000)
    cpu_cores: float | None = Field(default=None, gt=0, le=100_000)


AgentLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.:/-]+$")]
AgentLabelValue = Annotated[str, Field(max_length=255)]


class AgentNode(_NodeBase):
    type: Literal["agent"]
    requires: tuple[Capability, ...] = ()
    task: Annotated[dict[str, Any], AfterValidator(_task)]
    output: OutputFields | None = None
    retry: RetryPolicy | None = None
    timeout: PositiveDuration | None = None
    on_error: OnError | None = None
    # Routing: resources the agent must have, labels it must carry (all of them), and
    # how long the task may wait for such an agent before the node fails (None: no limit).
    resources: AgentResources | None = None
    labels: dict[AgentLabel, AgentLabelValue] | None = None
    capacity_timeout: PositiveDuration | None = None


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
