"""The command and reply models. One input model per command."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from chiffon.events.envelope import AGGREGATE_ID_PATTERN, Actor
from chiffon.events.limits import (
    COMMENT_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    REASON_MAX_CHARS,
    SPEC_STRING_MAX_BYTES,
    WORKFLOW_MAX_BYTES,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_VERSION_MAX,
)
from chiffon.events.runs import TriggerRef


class Command(BaseModel):
    """Base of every command: who asks, within which trace, under which idempotency key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: ClassVar[str]  # the service that handles it
    name: ClassVar[str]

    actor: Actor
    trace: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=IDEMPOTENCY_KEY_MAX_CHARS)


class RegisterWorkflow(Command):
    owner = "executor"
    name = "register_workflow"

    source: str = Field(max_length=WORKFLOW_MAX_BYTES)
    source_format: Literal["yaml", "json"] = "yaml"


class StartRun(Command):
    owner = "executor"
    name = "start_run"

    workflow: str = Field(min_length=1, max_length=WORKFLOW_NAME_MAX_CHARS)
    version: int | None = Field(default=None, ge=1, le=WORKFLOW_VERSION_MAX)
    inputs: dict[str, Any] = Field(default_factory=dict)
    trigger: TriggerRef | None = None


class ForkRun(Command):
    """Start a run that reuses ``run_id``'s recorded outputs of every node completed
    before ``at`` first started, and executes from ``at`` on with the changes: ``model``
    and ``prompt`` of the LLM node ``at`` (only that node), ``inputs`` over the parent's.
    Answered as ``StartRun`` is, plus ``forked_from: {run_id, at}``."""

    owner = "executor"
    name = "fork_run"

    run_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    at: str = Field(min_length=1, max_length=NODE_ID_MAX_CHARS)
    model: str | None = Field(default=None, min_length=1, max_length=MODEL_NAME_MAX_CHARS)
    prompt: str | None = Field(default=None, min_length=1, max_length=SPEC_STRING_MAX_BYTES)
    inputs: dict[str, Any] = Field(default_factory=dict)
    trigger: TriggerRef | None = None


class CancelRun(Command):
    owner = "executor"
    name = "cancel_run"

    run_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class ApproveNode(Command):
    owner = "executor"
    name = "approve_node"

    run_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    node_id: str = Field(min_length=1, max_length=NODE_ID_MAX_CHARS)
    approve: bool
    comment: str | None = Field(default=None, max_length=COMMENT_MAX_CHARS)


class IssueAgentCredential(Command):
    """Answered with ``{"id", "name", "credential", "prefix", "created_at"}``: the
    credential (``chfa_<id>_<secret>``) is in this answer only, never stored."""

    owner = "registry"
    name = "issue_agent_credential"

    agent_name: str = Field(alias="name", pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class RevokeAgentCredential(Command):
    """Answered with ``{"id", "name", "revoked": true}``."""

    owner = "registry"
    name = "revoke_agent_credential"

    credential_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class ListAgentCredentials(Command):
    """Answered with ``{"credentials": [{"id", "name", "prefix", "created_at", "revoked"}]}``."""

    owner = "registry"
    name = "list_agent_credentials"


class SetBudget(Command):
    """Create or change the budget of a scope. Answered with the budget (amounts as
    strings): ``{"id", "scope", "scope_id", "period", "hard_usd", "soft_usd",
    "timezone", "spent_usd", "reserved_usd", "period_start", "period_end",
    "soft_reached", "updated_at"}``. The cost service validates the fields (refused
    ``invalid`` with each bad field's path), so they are loosely typed here."""

    owner = "cost"
    name = "set_budget"

    scope: str = Field(max_length=20, description="global, workflow, key or run")
    scope_id: str = Field(max_length=200)
    period: str = Field(default="month", max_length=20, description="day, month or lifetime")
    hard_usd: Decimal | None = None
    soft_usd: Decimal | None = None
    timezone: str = Field(default="UTC", max_length=64, description="an IANA zone name")


class RemoveBudget(Command):
    """Answered with ``{"removed": true, "id", "scope", "scope_id"}``; ``not_found``
    when the scope has no budget."""

    owner = "cost"
    name = "remove_budget"

    scope: str = Field(max_length=20)
    scope_id: str = Field(max_length=200)


class ListBudgets(Command):
    """Answered with ``{"budgets": [budget, ...]}`` (every budget not removed, by id)."""

    owner = "cost"
    name = "list_budgets"


RefusalCode = Literal[
    "invalid",  # the command or its content is malformed (e.g. a spec with errors)
    "not_found",  # the aggregate or a referenced thing does not exist
    "conflict",  # the aggregate's state does not allow it (already ended, key reused…)
    "unavailable",  # the owner could not do it now; retry later
]


class Refusal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: RefusalCode
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class CommandReply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    result: dict[str, Any] = Field(default_factory=dict)
    refusal: Refusal | None = None


# Run ids from idempotency keys: uuid5(this namespace, "<actor kind>:<actor id>:<key>").
RUN_ID_NAMESPACE = uuid.UUID("6f0b8f52-3c3e-4a8e-9d0a-2f1c9e5b7a11")


def run_id_for(actor_kind: str, actor_id: str, idempotency_key: str) -> str:
    """The id of the run that ``StartRun`` with this actor and idempotency key starts:
    known before the run exists (a webhook answers with it before the run starts)."""
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"{actor_kind}:{actor_id}:{idempotency_key}"))


def command_subject(namespace: str, command: type[Command] | Command) -> str:
    return f"{namespace}.cmd.{command.owner}.{command.name}"
