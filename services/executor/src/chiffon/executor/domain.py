"""The run aggregate: a fold of a run's events into its state, and the decisions on it.

No I/O here. ``RunState.apply`` is the fold (deterministic: the same events always give
the same state); the ``decide_*`` functions turn a command and the current state into
the events to append, or raise a domain error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chiffon.events import Actor, Envelope
from chiffon.events import runs as ev

# Events that make a run runnable: the work items of the executors' shared consumer.
WORK_EVENT_TYPES: tuple[str, ...] = (
    ev.RunRequested.event_type,
    ev.ApprovalDecided.event_type,
    ev.RunResumed.event_type,
)
INTERRUPTED = "interrupted"  # the error type of an attempt whose replica stopped


# -- errors ------------------------------------------------------------------------


class DomainError(Exception):
    code = "conflict"


class RunNotFound(DomainError):
    code = "not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r}")
        self.run_id = run_id


class RunAlreadyEnded(DomainError):
    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} already ended ({status})")
        self.status = status


class NotWaitingForApproval(DomainError):
    def __init__(self, run_id: str, node_id: str, waiting: list[str]) -> None:
        hint = f"; it waits on: {', '.join(waiting)}" if waiting else "; it waits on no approval"
        super().__init__(f"run {run_id} is not waiting for an approval of node {node_id!r}{hint}")


class IdempotencyConflict(DomainError):
    def __init__(self, key: str, run_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different request (run {run_id})"
        )
        self.run_id = run_id


# -- state -------------------------------------------------------------------------


@dataclass
class NodeIteration:
    """One iteration of a node (its k-th execution in the run) and its attempts."""

    node_id: str
    iteration: int
    started: list[int] = field(default_factory=list)  # attempt numbers started
    failures: list[ev.NodeFailed] = field(default_factory=list)
    completed: ev.NodeCompleted | None = None

    @property
    def open_attempt(self) -> int | None:
        """An attempt started with no outcome recorded (its replica stopped)."""
        if not self.started or self.completed is not None:
            return None
        last = self.started[-1]
        ended = {f.attempt for f in self.failures}
        return None if last in ended else last

    @property
    def retry_failures(self) -> int:
        """Failures that count against the retry policy (interruptions do not)."""
        return sum(1 for f in self.failures if f.error.type != INTERRUPTED)

    @property
    def final_failure(self) -> ev.NodeFailed | None:
        last = self.failures[-1] if self.failures else None
        return last if last is not None and not last.will_retry else None


@dataclass
class Approval:
    node_id: str
    iteration: int
    message: str
    decided: ev.ApprovalDecided | None = None
    decided_by: Actor | None = None


@dataclass
class RunState:
    run_id: str
    version: int = 0  # stream sequence of the last event folded
    request: ev.RunRequested | None = None
    requested_by: Actor | None = None
    requested_at: datetime | None = None
    status: str = "pending"
    holder: str | None = None  # executor-<replica> holding the run (None when not held)
    holder_pid: int | None = None
    work_seq: int | None = None  # the work item the holder holds
    claim_seq: int | None = None  # sequence of the latest run.claimed
    claims: int = 0
    cancel_requested: bool = False
    cancel_reason: str | None = None
    nodes: dict[tuple[str, int], NodeIteration] = field(default_factory=dict)
    approvals: dict[tuple[str, int], Approval] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_events(cls, run_id: str, events: list[tuple[Envelope[Any], int]]) -> RunState:
        state = cls(run_id)
        for envelope, sequence in events:
            state.apply(envelope, sequence)
        return state

    @property
    def exists(self) -> bool:
        return self.request is not None

    @property
    def ended(self) -> bool:
        return self.status in ev.TERMINAL_STATUSES

    @property
    def held(self) -> bool:
        return self.holder is not None

    def pending_approvals(self) -> list[Approval]:
        return [a for a in self.approvals.values() if a.decided is None]

    def node(self, node_id: str, iteration: int) -> NodeIteration:
        key = (node_id, iteration)
        found = self.nodes.get(key)
        if found is None:
            found = self.nodes[key] = NodeIteration(node_id, iteration)
        return found

    def apply(self, envelope: Envelope[Any], sequence: int) -> None:  # noqa: C901 — one dispatch
        """Fold one event (in stream order) into the state."""
        p = envelope.payload
        self.version = max(self.version, sequence)
        if isinstance(p, ev.RunRequested):
            self.request = p
            self.requested_by = envelope.actor
            self.requested_at = envelope.occurred_at
            self.status = "pending"
        elif isinstance(p, ev.RunClaimed):
            self.holder, self.holder_pid, self.work_seq = p.executor, p.pid, p.work_seq
            self.claim_seq = sequence
            self.claims += 1
            if not self.ended:
                self.status = "running"
        elif isinstance(p, ev.NodeStarted):
            self.node(p.node_id, p.iteration).started.append(p.attempt)
        elif isinstance(p, ev.NodeCompleted):
            self.node(p.node_id, p.iteration).completed = p
        elif isinstance(p, ev.NodeFailed):
            self.node(p.node_id, p.iteration).failures.append(p)
        elif isinstance(p, ev.LlmCalled):
            self.prompt_tokens += p.prompt_tokens
            self.completion_tokens += p.completion_tokens
        elif isinstance(p, ev.ApprovalRequested):
            self.approvals[(p.node_id, p.iteration)] = Approval(p.node_id, p.iteration, p.message)
        elif isinstance(p, ev.ApprovalDecided):
            approval = self.approvals.get((p.node_id, p.iteration))
            if approval is not None:
                approval.decided, approval.decided_by = p, envelope.actor
            if self.status == "waiting_approval" and not self.pending_approvals():
                self.status = "pending"
        elif isinstance(p, ev.RunSuspended):
            self.holder = self.holder_pid = self.work_seq = None
            if not self.ended:
                self.status = "waiting_approval"
        elif isinstance(p, ev.CancelRequested):
            self.cancel_requested, self.cancel_reason = True, p.reason
        elif isinstance(p, ev.RunPaused):
            self.holder = self.holder_pid = self.work_seq = None
            if not self.ended:
                self.status = "paused"
        elif isinstance(p, ev.RunResumed):
            if self.status == "paused":
                self.status = "pending"
        elif isinstance(p, ev.RunCompleted):
            self.status, self.holder = "succeeded", None
        elif isinstance(p, ev.RunFailed):
            self.status, self.holder = "failed", None
        elif isinstance(p, ev.RunCancelled):
            self.status, self.holder = "cancelled", None

    # -- decisions on work items -----------------------------------------------------

    def should_execute(self, work_seq: int) -> bool:
        """Whether a replica handed the work item ``work_seq`` should claim and run the run.

        A held run is left to its holder (which sees the new event at its next append),
        unless the item is the very one the holder holds: then this is a redelivery
        because the holder went silent, and the run is taken over.
        """
        if not self.exists or self.ended:
            return False
        if self.held:
            return self.work_seq == work_seq
        return self.status in ("pending", "running") or self.cancel_requested

    def duration_ms(self, now: datetime | None = None) -> float:
        if self.requested_at is None:
            return 0.0
        delta = (now or datetime.now(UTC)) - self.requested_at
        return max(0.0, delta.total_seconds() * 1000)


# -- decisions on commands --------------------------------------------------------


def request_digest(workflow: str, version: int | None, inputs: dict[str, Any]) -> str:
    """The fingerprint of a start request, to tell a retry from a different request."""
    text = json.dumps(
        {"workflow": workflow, "version": version, "inputs": inputs},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def decide_cancel(state: RunState, reason: str | None) -> list[ev.EventPayload]:
    if not state.exists:
        raise RunNotFound(state.run_id)
    if state.ended:
        raise RunAlreadyEnded(state.run_id, state.status)
    requested = ev.CancelRequested(reason=reason)
    if state.held:
        # The holder stops at its next safe point and records run.cancelled.
        return [] if state.cancel_requested else [requested]
    # Nobody executes it (pending, waiting for an approval, paused): end it now.
    return [
        requested,
        ev.RunCancelled(reason=reason or "cancelled", duration_ms=state.duration_ms()),
    ]


def decide_approval(
    state: RunState, node_id: str, approved: bool, comment: str | None
) -> ev.ApprovalDecided:
    if not state.exists:
        raise RunNotFound(state.run_id)
    if state.ended:
        raise RunAlreadyEnded(state.run_id, state.status)
    waiting = [a for a in state.pending_approvals() if a.node_id == node_id]
    if not waiting:
        raise NotWaitingForApproval(
            state.run_id, node_id, sorted({a.node_id for a in state.pending_approvals()})
        )
    latest = max(waiting, key=lambda a: a.iteration)
    return ev.ApprovalDecided(
        node_id=node_id, approved=approved, comment=comment, iteration=latest.iteration
    )
