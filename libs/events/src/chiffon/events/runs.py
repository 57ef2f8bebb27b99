"""Events of a run. The aggregate id is the run id; ``correlation_id`` is the run id too.

A run's stream is its whole history: an auditor can replay it to see who asked for
it, which node ran when with which model, what each answer cost in tokens, who
approved what, and why it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from chiffon.events.envelope import EventPayload
from chiffon.events.limits import (
    COMMENT_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    REASON_MAX_CHARS,
    SPEC_STRING_MAX_BYTES,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_VERSION_MAX,
)
from chiffon.events.storable import MAX_NOTED_PATHS

# The run vocabulary, declared here once: the gateway, the CLI, the read models and the
# executor import it (a status added here is accepted and shown everywhere).
RunStatus = Literal[
    "pending", "running", "waiting_approval", "paused", "succeeded", "failed", "cancelled"
]
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
TERMINAL_STATUSES: frozenset[RunStatus] = frozenset({"succeeded", "failed", "cancelled"})


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(max_length=200, description="e.g. timeout, provider_error, invalid_output")
    message: str = Field(max_length=4000)
    node_id: str | None = Field(default=None, max_length=NODE_ID_MAX_CHARS)


class TriggerRef(BaseModel):
    """What started a run when it was not a person: a webhook delivery, a schedule tick."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["api", "cli", "webhook", "schedule", "planner"]
    id: str | None = Field(default=None, max_length=200)


FORK_CHANGES_MAX = 200
"""Node changes one fork may carry (its ancestors' and its own): a workflow's nodes,
each changed at most once in the list."""


class NodeChange(BaseModel):
    """A fork's change to one LLM node of the registered workflow version: its ``model``,
    its ``prompt``, or both (``None``: as registered)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    model: str | None = Field(default=None, min_length=1, max_length=MODEL_NAME_MAX_CHARS)
    prompt: str | None = Field(default=None, min_length=1, max_length=SPEC_STRING_MAX_BYTES)


class ForkLink(BaseModel):
    """The run this one was forked from, where, and what the fork changed.

    ``changes`` turn the registered version the request names into the spec the run
    executes (whose digest the request records): the parent's own changes first when
    the parent was a fork itself, then this fork's, one entry per node. ``inputs``
    names the run inputs this fork set (their values are the request's ``inputs``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(max_length=128)
    at: str = Field(max_length=NODE_ID_MAX_CHARS)
    changes: tuple[NodeChange, ...] = Field(default=(), max_length=FORK_CHANGES_MAX)
    inputs: tuple[Annotated[str, Field(max_length=VARIABLE_NAME_MAX_CHARS)], ...] = Field(
        default=(), max_length=FORK_CHANGES_MAX
    )


class RunRequested(EventPayload):
    """A run was asked for.

    Version 2 (issue 21) links a fork to its parent (``fork``); ``None`` for a run
    started from a workflow, as every version 1 event was."""

    event_type = "run.requested"
    schema_version = 2
    aggregate = "run"

    workflow: str = Field(max_length=WORKFLOW_NAME_MAX_CHARS)
    version: int = Field(ge=1, le=WORKFLOW_VERSION_MAX)
    digest: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    # The request's fingerprint: a repeat with the same idempotency key must match it.
    request_digest: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=IDEMPOTENCY_KEY_MAX_CHARS)
    trigger: TriggerRef | None = None
    fork: ForkLink | None = None


class ForkPrepared(EventPayload):
    """A fork's reused node completions (the events between its ``run.requested`` and
    this one) are recorded: the run is runnable from its fork node on. Its work item;
    the request of a fork is not, for the executor must not start the run before the
    outputs it reuses are in its log."""

    event_type = "run.fork.prepared"
    aggregate = "run"

    reused: int = Field(ge=0, description="node completions reused from the parent")


class RunClaimed(EventPayload):
    """A replica took the run (first start, or resumption after another replica died)."""

    event_type = "run.claimed"
    aggregate = "run"

    executor: str = Field(description="executor-<replica>, as `chiffon status` names it")
    pid: int
    resumed: bool = False
    # Stream sequence of the work item (the event that made the run runnable) the
    # replica holds: a redelivery of that same item means the holder stopped.
    work_seq: int | None = Field(default=None, ge=1)


class NodeStarted(EventPayload):
    event_type = "run.node.started"
    aggregate = "run"

    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    node_type: str
    attempt: int = Field(ge=1)
    iteration: int = Field(default=1, ge=1, description="1 + times this node ran before")


class NodeCompleted(EventPayload):
    event_type = "run.node.completed"
    aggregate = "run"

    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    attempt: int = Field(ge=1)
    iteration: int = Field(default=1, ge=1)
    outputs: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float = Field(ge=0)
    # Outputs too large for an event are stored in the run outputs object store;
    # ``outputs`` is then empty and this names the object.
    outputs_ref: str | None = Field(default=None, max_length=400)
    # JSON pointers into ``outputs`` of the strings and keys whose NUL or lone surrogates
    # were replaced by U+FFFD before recording (``storable.make_storable``, issue 16).
    # Empty in events recorded before, which still decode.
    replaced: list[str] = Field(default_factory=list, max_length=MAX_NOTED_PATHS)


class NodeFailed(EventPayload):
    event_type = "run.node.failed"
    aggregate = "run"

    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    attempt: int = Field(ge=1)
    iteration: int = Field(default=1, ge=1)
    error: ErrorInfo
    will_retry: bool
    retry_in_ms: float | None = None
    duration_ms: float = Field(ge=0)


BUDGET_HOLDS_MAX = 8  # a call counts against at most 4 budgets (global, workflow, key, run)
BudgetHoldId = Annotated[str, Field(min_length=1, max_length=200)]
"""A reservation's id as ``budget.reserved`` holds it (``Reservation.id``)."""


class LlmCalled(EventPayload):
    """One call to a model (one per try, fallbacks included).

    Version 2 (issue 18) records the token counts a price depends on beyond prompt and
    completion: cached input read and written, and reasoning tokens, where the provider
    reports them (0 where it does not), and why a budget chose the model when it did.
    ``prompt_tokens`` includes the cached ones and ``completion_tokens`` the reasoning
    ones, as OpenAI-style usage reports them.

    Version 3 records what the call was held by under a hard budget (``budget_holds``):
    its own reservation's id, or the ids of the leases it was drawn from (one per
    budget), so that the cost service can settle a lease whose replica died from the
    calls it paid for. Empty for a call no budget held."""

    event_type = "run.llm.called"
    schema_version = 3
    aggregate = "run"

    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    attempt: int = Field(ge=1)
    provider: str
    model: str
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)
    latency_ms: float = Field(ge=0)
    finish_reason: str | None = None
    ok: bool = True
    error: str | None = Field(default=None, max_length=4000)
    fallback_index: int = Field(default=0, ge=0, description="0: the node's model, 1+: fallbacks")
    budget_note: str | None = Field(
        default=None,
        max_length=REASON_MAX_CHARS,
        description="Why a budget sent the call to this model (a fallback taken before the call)",
    )
    budget_holds: tuple[BudgetHoldId, ...] = Field(
        default=(),
        max_length=BUDGET_HOLDS_MAX,
        description="The reservation, or the leases (one per budget), the call was held by",
    )


class ApprovalRequested(EventPayload):
    event_type = "run.approval.requested"
    aggregate = "run"

    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    message: str = Field(max_length=65_536)
    iteration: int = Field(default=1, ge=1)


class ApprovalDecided(EventPayload):
    """Who decided is the envelope's actor."""

    event_type = "run.approval.decided"
    aggregate = "run"

    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    approved: bool
    comment: str | None = Field(default=None, max_length=COMMENT_MAX_CHARS)
    iteration: int = Field(default=1, ge=1)


class CancelRequested(EventPayload):
    event_type = "run.cancel_requested"
    aggregate = "run"

    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class RunPaused(EventPayload):
    """The run stopped until something outside it changes; no replica holds it.

    ``reason: no_capacity``: an agent node found no agent that can take its task; what
    it needs is recorded, so that the run is resumed (``run.resumed``) by whichever
    replica first sees a capable agent register, come back or free capacity.

    ``reason: budget``: an LLM call would cross a hard budget and no cheaper fallback
    fits; the run resumes when that budget is raised or its period rolls over."""

    event_type = "run.paused"
    aggregate = "run"

    reason: str = Field(max_length=REASON_MAX_CHARS)
    node_id: str | None = Field(default=None, max_length=NODE_ID_MAX_CHARS)
    requires: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    gpu_vram_gb: float | None = None
    cpu_cores: float | None = None
    # ``reason: budget`` (issue 18): the budget whose hard limit the call would cross
    # (its aggregate id, e.g. ``global`` or ``workflow_triage``) and the call's worst case.
    budget: str | None = Field(default=None, max_length=200)
    needed_usd: Decimal | None = None


class RunResumed(EventPayload):
    event_type = "run.resumed"
    aggregate = "run"

    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class RunSuspended(EventPayload):
    """The replica stopped executing the run until an outside event (an approval
    decision) makes it runnable again; no replica holds the run meanwhile."""

    event_type = "run.suspended"
    aggregate = "run"

    reason: Literal["approval"] = "approval"
    waiting_for: list[str] = Field(default_factory=list, description="node ids")


class AgentTaskRequested(EventPayload):
    """An ``agent`` node's task, sent to the router (which picks an agent)."""

    event_type = "run.agent_task.requested"
    aggregate = "run"

    task_id: str = Field(max_length=200)
    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    attempt: int = Field(ge=1)
    iteration: int = Field(default=1, ge=1)
    capabilities: list[str] = Field(default_factory=list)
    task: dict[str, Any] = Field(default_factory=dict)


class AgentTaskAssigned(EventPayload):
    event_type = "run.agent_task.assigned"
    aggregate = "run"

    task_id: str = Field(max_length=200)
    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    agent_id: str = Field(max_length=200)
    agent_name: str | None = Field(default=None, max_length=200)
    # Why this agent: where it was reached, its routing score and the reasons behind it.
    attempt: int | None = Field(default=None, ge=1)
    iteration: int | None = Field(default=None, ge=1)
    address: str | None = Field(default=None, max_length=255)
    score: float | None = None
    reasons: list[str] = Field(default_factory=list, max_length=20)
    # The tool and the task's arguments as sent, with secrets masked and long texts cut
    # (``chiffon.executor.nodes.agent.recorded_arguments``): the audit trail of the call.
    tool: str | None = Field(default=None, max_length=63)
    arguments: dict[str, Any] | None = None


class AgentTaskFinished(EventPayload):
    event_type = "run.agent_task.finished"
    aggregate = "run"

    task_id: str = Field(max_length=200)
    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    ok: bool
    exit_code: int | None = None
    summary: str | None = Field(default=None, max_length=4000)
    error: ErrorInfo | None = None
    # The attempt, the agent that ran it, and what the task used as the agent measured it
    # (wall time, CPU seconds, peak memory, GPU memory when a GPU is present).
    attempt: int | None = Field(default=None, ge=1)
    agent_id: str | None = Field(default=None, max_length=200)
    duration_ms: float | None = Field(default=None, ge=0)
    cpu_seconds: float | None = Field(default=None, ge=0)
    peak_memory_bytes: float | None = Field(default=None, ge=0)
    gpu_memory_bytes: float | None = Field(default=None, ge=0)


class RunCompleted(EventPayload):
    event_type = "run.completed"
    aggregate = "run"

    outputs: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float = Field(ge=0)


class RunFailed(EventPayload):
    event_type = "run.failed"
    aggregate = "run"

    error: ErrorInfo
    duration_ms: float = Field(ge=0)


class RunCancelled(EventPayload):
    event_type = "run.cancelled"
    aggregate = "run"

    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)
    duration_ms: float = Field(ge=0)


RUN_ENDING_STATUS: Mapping[str, RunStatus] = {
    "run.completed": "succeeded",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}
"""The event types that end a run, with the status each leaves it in."""
RUN_ENDINGS = frozenset(RUN_ENDING_STATUS)

RUN_EVENTS: tuple[type[EventPayload], ...] = (
    RunRequested,
    ForkPrepared,
    RunClaimed,
    NodeStarted,
    NodeCompleted,
    NodeFailed,
    LlmCalled,
    ApprovalRequested,
    ApprovalDecided,
    CancelRequested,
    RunPaused,
    RunResumed,
    RunSuspended,
    RunCompleted,
    RunFailed,
    RunCancelled,
    AgentTaskRequested,
    AgentTaskAssigned,
    AgentTaskFinished,
)
