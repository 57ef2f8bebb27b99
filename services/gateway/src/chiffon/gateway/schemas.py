"""Request and response bodies of the API, named for their direction."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from chiffon.events.costs import BudgetPeriod
from chiffon.events.keys import ApiKeyRole
from chiffon.events.limits import (
    COMMENT_MAX_CHARS,
    KEY_NAME_MAX_CHARS,
    REASON_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_NAME_PATTERN,
    WORKFLOW_VERSION_MAX,
)
from chiffon.events.runs import RunStatus
from chiffon.events.storable import find_unstorable
from chiffon.readmodels.views import ApprovalPublic, RunPublic, RunSummary, WorkflowSummary

# The vocabulary is the events' own: a status or role added there is accepted here.
RunStatusName = RunStatus
Role = ApiKeyRole


def has_nul(value: Any) -> bool:
    """Text PostgreSQL or UTF-8 cannot store (NUL, a lone surrogate), at any depth."""
    return find_unstorable(value) is not None


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _no_nul(self) -> Any:
        for name in type(self).model_fields:
            found = find_unstorable(getattr(self, name), (name,))
            if found is not None:
                where, reason = found
                path = ".".join(str(part) for part in where)
                raise ValueError(f"{path}: {reason}")
        return self


class RunCreate(_In):
    workflow: str = Field(
        min_length=1,
        max_length=WORKFLOW_NAME_MAX_CHARS,
        pattern=WORKFLOW_NAME_PATTERN,
        description="A registered workflow's name",
    )
    version: int | None = Field(
        default=None, ge=1, le=WORKFLOW_VERSION_MAX, description="Default: the latest"
    )
    inputs: dict[str, Any] = Field(default_factory=dict)


class RunAccepted(BaseModel):
    run_id: str
    status: str
    workflow: str
    version: int
    created: bool = Field(description="False when an Idempotency-Key replayed an earlier request")


class RunsPublic(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = None


class CancelCreate(_In):
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class CancelAccepted(BaseModel):
    run_id: str
    status: str
    cancel_requested: bool


class ApprovalCreate(_In):
    approve: bool
    comment: str | None = Field(default=None, max_length=COMMENT_MAX_CHARS)


class ApprovalRecorded(BaseModel):
    run_id: str
    node_id: str
    approved: bool
    status: str


class ApprovalsPublic(BaseModel):
    approvals: list[ApprovalPublic]


class WorkflowRegistered(BaseModel):
    name: str
    version: int
    digest: str
    created: bool = Field(description="False when this exact version was already registered")


class WorkflowsPublic(BaseModel):
    workflows: list[WorkflowSummary]


def no_control_characters(name: str) -> str:
    """A name is printed in tables and logs: CR, LF or BEL in one broke or forged rows of
    ``chiffon keys list``. Control characters (Unicode Cc) and lone surrogates (Cs, not
    storable) are refused, naming the first one and its position."""
    for index, char in enumerate(name):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(
                f"a key name must not hold control characters "
                f"(U+{ord(char):04X} at character {index + 1})"
            )
    return name


def date_time_text(value: Any) -> Any:
    """A date-time arrives as the RFC 3339 string the schema says. Pydantic would also
    read a number as seconds since 1970: `{"expires_at": 0}` made an expired key (201),
    a request the schema forbids (schemathesis, 200 examples per operation)."""
    if value is not None and not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string, e.g. 2030-01-01T00:00:00Z")
    return value


class KeyCreate(_In):
    name: Annotated[
        str,
        Field(min_length=1, max_length=KEY_NAME_MAX_CHARS),
        AfterValidator(no_control_characters),
    ]
    role: Role
    expires_at: Annotated[AwareDatetime | None, BeforeValidator(date_time_text)] = Field(
        default=None, description="Optional expiry (UTC)"
    )


class KeyPublic(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str = Field(description="The key's first characters, to recognise it")
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    active: bool


class KeyCreated(KeyPublic):
    key: str = Field(description="The secret. Shown once: it is stored only as a hash.")


class KeysPublic(BaseModel):
    keys: list[KeyPublic]


class KeyRevoke(_In):
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class Me(BaseModel):
    id: str
    name: str
    role: Role


# -- agents ------------------------------------------------------------------------------

AgentStatusName = Literal["online", "offline", "deregistered"]


class AgentPublic(BaseModel):
    agent_id: str
    name: str
    host: str | None = None
    grpc_address: str | None = None
    capabilities: list[str]
    labels: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(
        description="cpu_cores, memory_bytes, gpus [{name, vram_bytes}] as registered"
    )
    max_concurrency: int | None = None
    status: AgentStatusName
    status_reason: str | None = None
    ttl_seconds: int | None = None
    registered_at: datetime | None = None
    updated_at: datetime | None = None
    live: dict[str, Any] | None = Field(
        default=None, description="The last heartbeat's metrics, when known"
    )


class AgentsPublic(BaseModel):
    agents: list[AgentPublic]
    next_cursor: str | None = None


class CapacityTotals(BaseModel):
    agents: int
    slots: int = Field(description="Sum of max_concurrency")
    cpu_cores: float
    memory_bytes: float
    gpus: int
    gpu_vram_bytes: float


class CapacityPublic(BaseModel):
    agents: list[AgentPublic] = Field(description="Online agents that could take such a task")
    totals: CapacityTotals


class AgentCredentialCreate(_In):
    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="The agent's name (it registers under it)",
    )


class AgentCredentialCreated(BaseModel):
    id: str
    name: str
    credential: str = Field(description="The secret. Shown once: it is stored only as a hash.")
    prefix: str
    created_at: datetime


class AgentCredentialPublic(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    revoked: bool


class AgentCredentialsPublic(BaseModel):
    credentials: list[AgentCredentialPublic]


class AgentCredentialRevoked(BaseModel):
    id: str
    name: str
    revoked: bool


# -- costs and budgets -----------------------------------------------------------------

USD_MAX_PLACES = 12
USD_MAX = Decimal("1e12")


def usd_amount(value: Any) -> Any:
    """A dollar amount as a decimal string or a JSON number (read through its text, never
    as a binary float): not negative, finite, at most 12 decimal places."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError('must be an amount in US dollars, as a string ("0.50") or a number')
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{str(value)[:40]!r} is not a number") from None
    if not amount.is_finite():
        raise ValueError("must be a finite amount")
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > USD_MAX:
        raise ValueError(f"must be at most {USD_MAX:f}")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > USD_MAX_PLACES:
        raise ValueError(f"must have at most {USD_MAX_PLACES} decimal places")
    return amount


UsdIn = Annotated[Decimal | None, BeforeValidator(usd_amount)]


class CostGroupPublic(BaseModel):
    key: str = Field(description="The provider, model, workflow, key id or day; (none) if unset")
    cost_usd: str = Field(description="Known spend, a decimal string")
    calls: int
    unknown_calls: int = Field(description="Calls of a model no price is known for")
    prompt_tokens: int
    completion_tokens: int


class CostsPublic(BaseModel):
    group_by: str
    groups: list[CostGroupPublic] = Field(description="Most expensive first")
    total_usd: str


class RunCostPublic(RunPublic):
    cost_usd: str = Field(default="0", description="The run's known spend, a decimal string")


class BudgetPut(_In):
    period: BudgetPeriod = Field(description="day and month are calendar-aligned in timezone")
    hard_usd: UsdIn = Field(default=None, description="Calls that would cross it do not go out")
    soft_usd: UsdIn = Field(default=None, description="An alert when spend reaches it")
    timezone: str = Field(
        default="UTC", min_length=1, max_length=64, description="An IANA time zone name"
    )


class BudgetPublic(BaseModel):
    id: str
    scope: str
    scope_id: str
    period: str
    hard_usd: str | None = None
    soft_usd: str | None = None
    timezone: str
    spent_usd: str = "0"
    reserved_usd: str = "0"
    period_start: datetime | None = None
    period_end: datetime | None = None
    soft_reached: bool = False
    updated_at: datetime | None = None


class BudgetsPublic(BaseModel):
    budgets: list[BudgetPublic]


class BudgetRemovedPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    removed: bool
