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
    SecretStr,
    model_validator,
)

from chiffon.events.costs import BudgetPeriod
from chiffon.events.keys import ApiKeyRole
from chiffon.events.limits import (
    COMMENT_MAX_CHARS,
    KEY_NAME_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    NODE_ID_PATTERN,
    REASON_MAX_CHARS,
    SPEC_STRING_MAX_BYTES,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_NAME_PATTERN,
    WORKFLOW_VERSION_MAX,
)
from chiffon.events.runs import RunStatus
from chiffon.events.storable import find_unstorable
from chiffon.events.triggers import (
    CRON_MAX_CHARS,
    INPUT_MAPPING_MAX_CHARS,
    MAX_SECRETS,
    TRIGGER_NAME_MAX_CHARS,
    TRIGGER_NAME_PATTERN,
    OverlapPolicy,
    Scheme,
)
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


class ForkCreate(_In):
    """A what-if fork: ``model`` and ``prompt`` change the LLM node ``at`` only (every
    iteration of it in the fork); ``inputs`` are laid over the parent run's inputs."""

    at: str = Field(
        min_length=1,
        max_length=NODE_ID_MAX_CHARS,
        pattern=NODE_ID_PATTERN,
        description="The node the fork executes from (it must have started in the parent)",
    )
    model: str | None = Field(
        default=None, min_length=1, max_length=MODEL_NAME_MAX_CHARS, description="`at`'s model"
    )
    prompt: str | None = Field(
        default=None, min_length=1, max_length=SPEC_STRING_MAX_BYTES, description="`at`'s prompt"
    )
    inputs: dict[str, Any] = Field(default_factory=dict, description="Run inputs to change")


class ForkedFrom(BaseModel):
    run_id: str
    at: str


class ForkAccepted(RunAccepted):
    forked_from: ForkedFrom


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


# -- triggers and schedules --------------------------------------------------------------

SECRET_MIN_CHARS = 16
SECRET_MAX_CHARS = 1000
"""A webhook secret (``whsec_...``), WhatsApp app secret or Telegram secret token: as the
trigger service bounds them (which also checks each scheme's own form)."""
TOKEN_MAX_CHARS = 1000
"""A WhatsApp verify token, a reply's API token (the command's own bound)."""


def no_control_characters_in(value: str) -> str:
    """Any text a person types that ends up in a table, a log line or a header: control
    characters (Cc) and lone surrogates (Cs) refused, naming the first one's position
    (never the value: it may be a secret)."""
    for index, char in enumerate(value):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(
                f"must not hold control characters (U+{ord(char):04X} at character {index + 1})"
            )
    return value


def _secret_text(secret: SecretStr) -> SecretStr:
    no_control_characters_in(secret.get_secret_value())
    return secret


TriggerName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TRIGGER_NAME_MAX_CHARS,
        pattern=TRIGGER_NAME_PATTERN,
        description="A slug: lower-case letters, digits, - and _ (it is the hook's URL part)",
    ),
]
WorkflowName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=WORKFLOW_NAME_MAX_CHARS,
        pattern=WORKFLOW_NAME_PATTERN,
        description="A registered workflow's name",
    ),
]
WorkflowVersion = Annotated[
    int | None, Field(default=None, ge=1, le=WORKFLOW_VERSION_MAX, strict=True)
]
VariableName = Annotated[
    str,
    Field(min_length=1, max_length=VARIABLE_NAME_MAX_CHARS, pattern=NODE_ID_PATTERN),
]
NO_CONTROL = r"^[^\u0000-\u001F\u007F-\u009F]*$"
"""What ``no_control_characters_in`` lets through, for the OpenAPI schema (clients and
the fuzzer see the rule the check enforces)."""
_NO_CONTROL_SCHEMA: Any = {"pattern": NO_CONTROL}

Secret = Annotated[
    SecretStr,
    Field(
        min_length=SECRET_MIN_CHARS,
        max_length=SECRET_MAX_CHARS,
        json_schema_extra=_NO_CONTROL_SCHEMA,
    ),
    AfterValidator(_secret_text),
]
Token = Annotated[
    SecretStr,
    Field(min_length=1, max_length=TOKEN_MAX_CHARS, json_schema_extra=_NO_CONTROL_SCHEMA),
    AfterValidator(_secret_text),
]
InputSource = Annotated[
    str,
    Field(min_length=1, max_length=INPUT_MAPPING_MAX_CHARS, json_schema_extra=_NO_CONTROL_SCHEMA),
    AfterValidator(no_control_characters_in),
]
ZoneName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$",
        description="An IANA time zone name",
    ),
]


class TriggerReplyIn(_In):
    output: VariableName = Field(description="The run output (state key) sent back to the chat")
    token: Token | None = Field(
        default=None,
        description="The API token replies are sent with (Telegram bot token, WhatsApp "
        "access token). Write-only: stored encrypted, never returned.",
    )


class TriggerCreate(_In):
    name: TriggerName
    workflow: WorkflowName
    version: WorkflowVersion = Field(default=None, description="Default: the latest at delivery")
    scheme: Scheme = Field(description="How deliveries are verified")
    secret: Secret | None = Field(
        default=None,
        description="The secret deliveries are verified with (this or secrets). "
        "Write-only: stored encrypted, never returned.",
    )
    secrets: list[Secret] | None = Field(
        default=None,
        max_length=MAX_SECRETS,
        description="Several active secrets (rotation), newest first; instead of secret",
    )
    verify_token: Token | None = Field(
        default=None, description="WhatsApp's GET verification token (write-only)"
    )
    inputs: dict[VariableName, InputSource] = Field(
        default_factory=dict,
        max_length=100,
        description="Run input name → a JSON pointer into the body (/issue/title), "
        "header:<name>, delivery:id or delivery:received_at",
    )
    reply: TriggerReplyIn | None = Field(
        default=None, description="WhatsApp and Telegram: send this output back to the chat"
    )

    @model_validator(mode="after")
    def _one_way_to_give_secrets(self) -> TriggerCreate:
        if self.secret is not None and self.secrets is not None:
            raise ValueError("give secret or secrets, not both")
        if self.secret is None and not self.secrets:
            raise ValueError("a trigger needs a secret (secret, or secrets for several)")
        return self

    def secret_values(self) -> list[str]:
        given = [self.secret] if self.secret is not None else list(self.secrets or [])
        return [s.get_secret_value() for s in given]


class TriggerSecretsPut(_In):
    secrets: list[Secret] = Field(
        min_length=1,
        max_length=MAX_SECRETS,
        description="The trigger's secrets from now on, newest first (write-only)",
    )


class TriggerDisable(_In):
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class TriggerReplay(_In):
    from_: Annotated[AwareDatetime | None, BeforeValidator(date_time_text)] = Field(
        default=None, alias="from", description="Deliveries received at or after (RFC 3339)"
    )
    to: Annotated[AwareDatetime | None, BeforeValidator(date_time_text)] = Field(
        default=None, description="Deliveries received before (RFC 3339)"
    )
    workflow: WorkflowName | None = Field(default=None, description="Default: the trigger's")
    version: WorkflowVersion = Field(default=None, description="Default: the latest")

    @model_validator(mode="after")
    def _from_before_to(self) -> TriggerReplay:
        if self.from_ is not None and self.to is not None and self.from_ >= self.to:
            raise ValueError("from must be before to")
        if self.version is not None and self.workflow is None:
            raise ValueError("a version needs its workflow")
        return self


class TriggerReplyPublic(BaseModel):
    output: str


class TriggerPublic(BaseModel):
    """A trigger as the API shows it: never a secret or token, only how many are set."""

    name: str
    workflow: str
    version: int | None = None
    scheme: str
    enabled: bool
    disabled_reason: str | None = Field(default=None, description="Why it was disabled")
    secrets: int = Field(default=0, description="How many secrets are active (0: off)")
    inputs: dict[str, str] = Field(default_factory=dict)
    reply: TriggerReplyPublic | None = None
    hook_path: str
    hook_url: str = Field(description="Where the sender posts its deliveries")
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deliveries: int = 0
    last_delivery_at: datetime | None = None


class DeliveryPublic(BaseModel):
    delivery: str = Field(description="The delivery's id in Chiffon")
    delivery_id: str = Field(description="The sender's delivery id")
    received_at: datetime
    run_id: str | None = None
    status: str | None = None


class TriggerDetailPublic(TriggerPublic):
    recent_deliveries: list[DeliveryPublic] = Field(
        default_factory=list, description="Newest first, at most 20"
    )


class TriggersPublic(BaseModel):
    triggers: list[TriggerPublic]


class ReplayedRun(BaseModel):
    delivery: str
    run_id: str


class ReplayRefused(BaseModel):
    delivery: str
    error: str = Field(description="Why the executor refused its run (code: message)")


class ReplayPublic(BaseModel):
    trigger: str
    replayed: int
    runs: list[ReplayedRun]
    refused: list[ReplayRefused] = Field(
        default_factory=list, description="Deliveries whose run was refused (not retried)"
    )


class ScheduleCreate(_In):
    name: TriggerName
    workflow: WorkflowName
    version: WorkflowVersion = Field(default=None, description="Default: the latest at each tick")
    cron: Annotated[
        str,
        Field(min_length=1, max_length=CRON_MAX_CHARS, json_schema_extra=_NO_CONTROL_SCHEMA),
        AfterValidator(no_control_characters_in),
    ] = Field(description='Five fields, "*/15 9-17 * * MON-FRI"')
    timezone: ZoneName = "UTC"
    inputs: dict[VariableName, Any] = Field(default_factory=dict, max_length=100)
    jitter_seconds: int = Field(default=0, ge=0, le=3600, strict=True)
    overlap: OverlapPolicy = Field(
        default="skip",
        description="While the previous run goes on: skip, buffer_one, allow_all or cancel_other",
    )
    catchup_window_seconds: int = Field(
        default=60,
        ge=0,
        le=7 * 86400,
        strict=True,
        description="Ticks missed within it still fire",
    )


class SchedulePause(_In):
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class SchedulePublic(BaseModel):
    name: str
    workflow: str
    version: int | None = None
    cron: str
    timezone: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    jitter_seconds: int = 0
    overlap: str = "skip"
    catchup_window_seconds: int = 60
    paused: bool = False
    next_fire_times: list[datetime] = Field(
        default_factory=list, description="The next 5 (none when paused)"
    )
    last_fired_at: datetime | None = None
    last_run_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SchedulesPublic(BaseModel):
    schedules: list[SchedulePublic]


class ScheduleDeletedPublic(BaseModel):
    deleted: bool
    name: str
