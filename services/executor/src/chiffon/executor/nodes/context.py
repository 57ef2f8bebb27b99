"""What a node runner needs from the run it executes in, and how a node fails.

The graph's nodes are compiled once per workflow version; the run comes in with each
call (``config["configurable"]["chiffon"]``), as an object with the ``Execution``
interface (``execution.RunExecution``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from chiffon.core.logging import get_logger
from chiffon.events import Envelope
from chiffon.events.runs import ApprovalDecided, ErrorInfo, LlmCalled, NodeCompleted, RunPaused
from chiffon.events.storable import make_storable
from chiffon.eventstore import EventStore
from chiffon.executor.domain import RunState
from chiffon.executor.models import ModelGateway

if TYPE_CHECKING:
    from chiffon.executor.budgets.gate import BudgetGate

MAX_ERROR = 3900
log = get_logger(__name__)


class NodeFailure(Exception):
    """A node failed for good (attempts spent, ``on_error: fail``): the run fails."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class RunCancelledSignal(Exception):
    """A cancel was requested: stop at this safe point."""


class CapacityPause(Exception):
    """No agent can take a node's task: the run pauses (``paused``, a ``RunPaused``
    saying what it needs) and holds nothing until a capable agent shows up."""

    def __init__(self, paused: RunPaused) -> None:
        super().__init__(paused.reason)
        self.paused = paused


class BudgetPause(Exception):
    """An llm call would cross a hard budget and no cheaper fallback fits: the run
    pauses (``run.paused {reason: budget}``, with the budget and the call's worst case),
    recording the calls its attempt made before, and holds nothing until the budget is
    raised or removed or its period rolls over (``budgets.resumer``)."""

    def __init__(self, paused: RunPaused, calls: list[LlmCalled]) -> None:
        super().__init__(paused.reason)
        self.paused = paused
        self.calls = calls


class NodeError(Exception):
    """One attempt failed. ``retryable`` errors are retried per the node's policy, not
    before ``retry_after`` seconds when the provider asked for a wait."""

    def __init__(
        self, kind: str, message: str, *, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after


class Execution(Protocol):
    """What the graph's nodes need from the run they execute in."""

    run: RunState
    store: EventStore  # agent memory is read and written here (``nodes.memory``)
    llm: ModelGateway
    trace: str | None  # the run's W3C traceparent, carried to what it calls (agents)
    budget: BudgetGate | None  # hard budgets checked before each model call (None: none)

    def prefer_local_below(self, node_id: str) -> float | None: ...

    def next_iteration(self, node_id: str) -> int: ...
    def edge_fired(self, edge_index: int, limit: int | None) -> bool: ...
    def check_cancel(self) -> None: ...
    def enter(self) -> None: ...
    def leave(self) -> None: ...
    def event(self, payload: Any) -> Envelope[Any]: ...
    async def append(self, payloads: list[Any], *, check_cancel: bool = True) -> None: ...
    async def interruptible(self, awaitable: Any) -> Any: ...
    async def sleep(self, seconds: float) -> None: ...
    async def wait_approval(self, node_id: str, iteration: int) -> tuple[ApprovalDecided, str]: ...
    async def completed_outputs(self, completed: NodeCompleted) -> dict[str, Any]: ...
    async def completion(
        self,
        node_id: str,
        attempt: int,
        iteration: int,
        outputs: dict[str, Any],
        duration_ms: float,
    ) -> NodeCompleted: ...


def storable_text(text: str) -> str:
    """``text`` with any NUL or lone surrogate replaced by U+FFFD: a provider's or a
    tool's error message is recorded as it came, and PostgreSQL refuses a NUL."""
    fixed: str = make_storable(text)[0]
    return fixed


def error_info(kind: str, message: str, node_id: str | None) -> ErrorInfo:
    """An ``ErrorInfo`` whose message fits the event's limit and can be stored."""
    return ErrorInfo(type=kind, message=storable_text(message[:MAX_ERROR]), node_id=node_id)


async def storable_completion(
    ctx: Execution,
    node_id: str,
    attempt: int,
    iteration: int,
    outputs: dict[str, Any],
    duration_ms: float,
) -> tuple[NodeCompleted, dict[str, Any]]:
    """The node's ``run.node.completed`` and the outputs the run goes on with, both made
    storable first (issue 16): a model's answer, a tool's output or an expression's
    result holding a NUL or a lone surrogate would stop the runs read model for everyone.
    What was replaced is noted on the event (``replaced``) and logged."""
    outputs, replaced = make_storable(outputs)
    completed = await ctx.completion(node_id, attempt, iteration, outputs, duration_ms)
    if replaced:
        log.warning(
            "run.node.output_replaced",
            run_id=ctx.run.run_id,
            node_id=node_id,
            iteration=iteration,
            replaced=replaced,
            reason="NUL or lone surrogate replaced by U+FFFD",
        )
        completed = completed.model_copy(update={"replaced": replaced})
    return completed, outputs
