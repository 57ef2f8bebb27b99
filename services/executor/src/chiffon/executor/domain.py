"""The executor's aggregates, run and workflow: immutable states, their folds, the decisions.

No I/O and no clock here. A state is a frozen value rebuilt by one pure fold
(``evolve`` for a run, ``evolve_workflow`` for a workflow): the same events always
give the same state, and an old state is never changed under a reader's feet. Every
decision is a ``decide_*`` function: the state, the command and the current time in;
the events to append out, or a ``DomainError`` (a typed refusal) raised.

The run's status is folded by ``chiffon.events.run_status.next_status``, the very
transition the runs read model uses, so the executor and what users see cannot drift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from immutables import Map

from chiffon.events import Actor, Envelope, EventPayload
from chiffon.events import runs as ev
from chiffon.events.limits import WORKFLOW_MAX_BYTES
from chiffon.events.memory import MemoryRead
from chiffon.events.run_status import INITIAL_STATUS, next_status
from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.workflow import InputError, LlmNode, SpecError, WorkflowSpec, load_spec, spec_from_dict

if TYPE_CHECKING:  # only their shapes: importing the commands package starts the NATS bus's
    from chiffon.commands import ApproveNode, CancelRun, RegisterWorkflow, StartRun
    from chiffon.commands.model import ForkRun

# Events that make a run runnable: the work items of the executors' shared consumer.
WORK_EVENT_TYPES: tuple[str, ...] = (
    ev.RunRequested.event_type,
    ev.ApprovalDecided.event_type,
    ev.RunResumed.event_type,
    ev.ForkPrepared.event_type,
)
INTERRUPTED = "interrupted"  # the error type of an attempt whose replica stopped


# -- refusals ------------------------------------------------------------------------


class DomainError(Exception):
    """A command the aggregate's state refuses. ``code`` and ``details`` are what the
    command bus answers with (a refusal code of ``chiffon.commands``)."""

    code = "conflict"

    @property
    def details(self) -> list[dict[str, Any]]:
        return []


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

    @property
    def details(self) -> list[dict[str, Any]]:
        return [{"path": "idempotency_key", "line": None, "message": str(self)}]


class InvalidInputs(DomainError):
    code = "invalid"

    def __init__(self, spec: WorkflowSpec, problems: Iterable[str]) -> None:
        super().__init__(f"the inputs do not match workflow {spec.name!r} v{spec.version}")
        self.problems = list(problems)

    @property
    def details(self) -> list[dict[str, Any]]:
        return [{"path": "inputs", "line": None, "message": p} for p in self.problems]


class InvalidWorkflow(DomainError):
    code = "invalid"

    def __init__(self, error: SpecError) -> None:
        count = len(error.issues)
        super().__init__(f"the workflow has {count} error{'s' if count != 1 else ''}")
        self.issues = list(error.issues)

    @property
    def details(self) -> list[dict[str, Any]]:
        return [{"path": i.path, "line": i.line, "message": i.message} for i in self.issues]


class WorkflowTooLarge(DomainError):
    code = "invalid"

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the workflow is too large to register ({size} bytes with its canonical form; "
            f"the limit is {WORKFLOW_MAX_BYTES} bytes)"
        )
        self.size = size


class VersionAlreadyRegistered(DomainError):
    def __init__(self, name: str, version: int, digest: str, next_version: int) -> None:
        super().__init__(
            f"workflow {name!r} version {version} is already registered with "
            f"different content (digest {digest[:12]}); workflow versions are "
            f"immutable: register it as version {next_version}"
        )

    @property
    def details(self) -> list[dict[str, Any]]:
        return [{"path": "version", "line": None, "message": "version already registered"}]


class NodeNotInWorkflow(DomainError):
    code = "invalid"

    def __init__(self, node_id: str, spec: WorkflowSpec) -> None:
        known = ", ".join(node.id for node in spec.nodes)
        super().__init__(
            f"workflow {spec.name!r} v{spec.version} has no node {node_id!r} (nodes: {known})"
        )

    @property
    def details(self) -> list[dict[str, Any]]:
        return [{"path": "at", "line": None, "message": str(self)}]


class NotAnLlmNode(DomainError):
    code = "invalid"

    def __init__(self, node_id: str, node_type: str, changed: str) -> None:
        super().__init__(
            f"node {node_id!r} is an {node_type} node: only an llm node has a {changed} to change"
        )
        self.changed = changed

    @property
    def details(self) -> list[dict[str, Any]]:
        return [{"path": self.changed, "line": None, "message": str(self)}]


class NodeNeverStarted(DomainError):
    def __init__(self, run_id: str, node_id: str) -> None:
        super().__init__(
            f"node {node_id!r} never started in run {run_id}: there is nothing to fork from"
        )


class ForkTooLarge(DomainError):
    code = "invalid"

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the fork's request is {size} bytes with its changes and inputs; "
            f"the limit is {FORK_REQUEST_MAX_BYTES} bytes"
        )


class WorkflowNotFound(DomainError):
    code = "not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no workflow named {name!r} is registered")


class VersionNotFound(DomainError):
    code = "not_found"

    def __init__(self, name: str, version: int | None, versions: Iterable[int]) -> None:
        listed = ", ".join(str(v) for v in sorted(versions))
        super().__init__(f"workflow {name!r} has no version {version} (versions: {listed})")


# -- the run's state -------------------------------------------------------------------


class NodeIteration(NamedTuple):
    """One iteration of a node (its k-th execution in the run) and its attempts.

    A named tuple rather than a frozen dataclass: made anew for every node event, and
    five times cheaper to make."""

    node_id: str
    iteration: int
    started: tuple[int, ...] = ()  # attempt numbers started
    failures: tuple[ev.NodeFailed, ...] = ()
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


class Approval(NamedTuple):
    node_id: str
    iteration: int
    message: str
    decided: ev.ApprovalDecided | None = None
    decided_by: Actor | None = None


NodeKey = tuple[str, int]  # (node id, iteration)
# Persistent maps (a HAMT): a new node event makes a new map sharing all but a path of
# the old one, so a run of n node executions folds in O(n log n), not O(n^2) as a copied
# dict would (20,000 events: 2 s of CPU on the executor's loop, and on every cold load).
_NO_NODES: Map[NodeKey, NodeIteration] = Map()
_NO_APPROVALS: Map[NodeKey, Approval] = Map()
_NO_READS: Map[NodeKey, MemoryRead] = Map()
_NO_AGENTS: Map[NodeKey, str] = Map()


@dataclass(frozen=True)
class RunState:
    """A run as its events say it is. Frozen: a new event makes a new state (``evolve``).

    No ``slots`` on purpose: ``evolve`` copies the instance dict in one C-level update,
    which folds ~50 events in a third of the time ``dataclasses.replace`` takes."""

    run_id: str
    version: int = 0  # stream sequence of the last event folded
    request: ev.RunRequested | None = None
    requested_by: Actor | None = None
    requested_at: datetime | None = None
    status: ev.RunStatus = INITIAL_STATUS
    holder: str | None = None  # executor-<replica> holding the run (None when not held)
    holder_pid: int | None = None
    work_seq: int | None = None  # the work item the holder holds
    claim_seq: int | None = None  # sequence of the latest run.claimed
    claims: int = 0
    cancel_requested: bool = False
    cancel_reason: str | None = None
    nodes: Map[NodeKey, NodeIteration] = field(default_factory=lambda: _NO_NODES)
    approvals: Map[NodeKey, Approval] = field(default_factory=lambda: _NO_APPROVALS)
    # Agent memory (issue 20): what each node execution read, used again on a replay, and
    # the agent that ran each agent node's execution (its memory namespace).
    memory_reads: Map[NodeKey, MemoryRead] = field(default_factory=lambda: _NO_READS)
    task_agents: Map[NodeKey, str] = field(default_factory=lambda: _NO_AGENTS)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    event_count: int = 0  # events folded: what a run's cap on stored events counts
    fork_prepared: bool = False  # a fork's reused completions are all recorded
    # The traceparent of the execution that last started a node (its run span): the run
    # span of a later execution links to it, so a trace shows one execution to the next.
    execution_trace: str | None = None

    @classmethod
    def from_events(cls, run_id: str, events: Iterable[tuple[Envelope[Any], int]]) -> RunState:
        state = cls(run_id)
        for envelope, sequence in events:
            state = evolve(state, envelope, sequence)
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

    def should_execute(self, work_seq: int) -> bool:
        """Whether a replica handed the work item ``work_seq`` should claim and run the run.

        A held run is left to its holder (which sees the new event at its next append),
        unless the item is the very one the holder holds: then this is a redelivery
        because the holder went silent, and the run is taken over.
        """
        if not self.exists or self.ended:
            return False
        assert self.request is not None
        if self.request.fork is not None and not self.fork_prepared:
            return False  # its reused completions are still being recorded
        if self.held:
            return self.work_seq == work_seq
        return self.status in ("pending", "running") or self.cancel_requested

    def duration_ms(self, now: datetime) -> float:
        """Milliseconds from the request to ``now`` (the caller's clock, not read here)."""
        if self.requested_at is None:
            return 0.0
        return max(0.0, (now - self.requested_at).total_seconds() * 1000)


# -- the run's fold ------------------------------------------------------------------------
#
# One small function per payload type, found by a dict lookup on the payload's type
# (eventsourcing's singledispatch, without its per-call overhead on the executor's hot
# path). Each returns the changed fields; ``evolve`` makes the new state in one step.

_Changes = dict[str, Any]
_new_object = object.__new__
_set_attribute = object.__setattr__  # past the frozen dataclass's guard, for a new object only
_Fold = Callable[[RunState, Envelope[Any], Any, int], _Changes]


def _node(state: RunState, node_id: str, iteration: int) -> NodeIteration:
    return state.nodes.get((node_id, iteration)) or NodeIteration(node_id, iteration)


def _with_node(state: RunState, node: NodeIteration) -> _Changes:
    return {"nodes": state.nodes.set((node.node_id, node.iteration), node)}


def _copy_with(state: RunState, changes: _Changes) -> RunState:
    """``dataclasses.replace`` for the run's state, at the speed the hot path needs:
    the old instance's field dict, copied and updated in C, becomes the new one's."""
    fields = state.__dict__.copy()
    fields.update(changes)
    new = _new_object(RunState)
    _set_attribute(new, "__dict__", fields)
    return new


def _requested(state: RunState, env: Envelope[Any], p: ev.RunRequested, seq: int) -> _Changes:
    return {"request": p, "requested_by": env.actor, "requested_at": env.occurred_at}


def _fork_prepared(state: RunState, env: Envelope[Any], p: ev.ForkPrepared, seq: int) -> _Changes:
    return {"fork_prepared": True}


def _claimed(state: RunState, env: Envelope[Any], p: ev.RunClaimed, seq: int) -> _Changes:
    return {
        "holder": p.executor,
        "holder_pid": p.pid,
        "work_seq": p.work_seq,
        "claim_seq": seq,
        "claims": state.claims + 1,
    }


def _node_started(state: RunState, env: Envelope[Any], p: ev.NodeStarted, seq: int) -> _Changes:
    n = _node(state, p.node_id, p.iteration)
    started = (*n.started, p.attempt)
    changes = _with_node(
        state, NodeIteration(n.node_id, n.iteration, started, n.failures, n.completed)
    )
    if env.trace is not None:
        changes["execution_trace"] = env.trace
    return changes


def _node_completed(state: RunState, env: Envelope[Any], p: ev.NodeCompleted, seq: int) -> _Changes:
    n = _node(state, p.node_id, p.iteration)
    return _with_node(state, NodeIteration(n.node_id, n.iteration, n.started, n.failures, p))


def _node_failed(state: RunState, env: Envelope[Any], p: ev.NodeFailed, seq: int) -> _Changes:
    n = _node(state, p.node_id, p.iteration)
    failures = (*n.failures, p)
    return _with_node(
        state, NodeIteration(n.node_id, n.iteration, n.started, failures, n.completed)
    )


def _llm_called(state: RunState, env: Envelope[Any], p: ev.LlmCalled, seq: int) -> _Changes:
    return {
        "prompt_tokens": state.prompt_tokens + p.prompt_tokens,
        "completion_tokens": state.completion_tokens + p.completion_tokens,
    }


def _approval_requested(
    state: RunState, env: Envelope[Any], p: ev.ApprovalRequested, seq: int
) -> _Changes:
    approval = Approval(p.node_id, p.iteration, p.message)
    return {"approvals": state.approvals.set((p.node_id, p.iteration), approval)}


def _approval_decided(
    state: RunState, env: Envelope[Any], p: ev.ApprovalDecided, seq: int
) -> _Changes:
    key = (p.node_id, p.iteration)
    approval = state.approvals.get(key)
    if approval is None:
        return {}
    decided = approval._replace(decided=p, decided_by=env.actor)
    return {"approvals": state.approvals.set(key, decided)}


def _memory_read(state: RunState, env: Envelope[Any], p: MemoryRead, seq: int) -> _Changes:
    key = (p.node_id, p.iteration)
    if key in state.memory_reads:
        return {}  # the first read is the one the node used
    return {"memory_reads": state.memory_reads.set(key, p)}


def _task_assigned(
    state: RunState, env: Envelope[Any], p: ev.AgentTaskAssigned, seq: int
) -> _Changes:
    if p.iteration is None:
        return {}
    name = p.agent_name or p.agent_id
    return {"task_agents": state.task_agents.set((p.node_id, p.iteration), name)}


def _let_go(state: RunState, env: Envelope[Any], p: Any, seq: int) -> _Changes:
    """Suspended or paused: no replica holds the run any more."""
    return {"holder": None, "holder_pid": None, "work_seq": None}


def _cancel_requested(
    state: RunState, env: Envelope[Any], p: ev.CancelRequested, seq: int
) -> _Changes:
    return {"cancel_requested": True, "cancel_reason": p.reason}


def _ended(state: RunState, env: Envelope[Any], p: Any, seq: int) -> _Changes:
    return {"holder": None}


_FOLDS: dict[type[EventPayload], _Fold] = {
    ev.RunRequested: _requested,
    ev.ForkPrepared: _fork_prepared,
    ev.RunClaimed: _claimed,
    ev.NodeStarted: _node_started,
    ev.NodeCompleted: _node_completed,
    ev.NodeFailed: _node_failed,
    ev.LlmCalled: _llm_called,
    ev.ApprovalRequested: _approval_requested,
    ev.ApprovalDecided: _approval_decided,
    MemoryRead: _memory_read,
    ev.AgentTaskAssigned: _task_assigned,
    ev.RunSuspended: _let_go,
    ev.RunPaused: _let_go,
    ev.CancelRequested: _cancel_requested,
    ev.RunCompleted: _ended,
    ev.RunFailed: _ended,
    ev.RunCancelled: _ended,
}


def evolve(state: RunState, envelope: Envelope[Any], sequence: int) -> RunState:
    """The run after one more event (in stream order); ``state`` itself is left as is.

    Takes the envelope and its stream sequence rather than a ``RecordedEvent``: the
    executor folds the events it has just appended, which have no stored record yet,
    and an extra object per event would cost on its hot path."""
    payload = envelope.payload
    fold = _FOLDS.get(type(payload))
    changes = fold(state, envelope, payload, sequence) if fold is not None else {}
    changes["version"] = sequence if sequence > state.version else state.version
    changes["event_count"] = state.event_count + 1
    # Only a decision's transition reads how many approvals are left undecided.
    open_approvals = 0
    if type(payload) is ev.ApprovalDecided:
        approvals = changes.get("approvals", state.approvals)
        open_approvals = sum(1 for a in approvals.values() if a.decided is None)
    status = next_status(state.status, payload, open_approvals)
    if status != state.status:
        changes["status"] = status
    return _copy_with(state, changes)


# -- decisions on a run ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimRun:
    """A replica handed the work item ``work_seq`` asks to execute its run."""

    work_seq: int
    executor: str  # executor-<replica>
    pid: int


def request_digest(workflow: str, version: int | None, inputs: dict[str, Any]) -> str:
    """The fingerprint of a start request, to tell a retry from a different request."""
    text = json.dumps(
        {"workflow": workflow, "version": version, "inputs": inputs},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def decide_start(
    state: RunState, command: StartRun, spec: WorkflowSpec, digest: str, now: datetime
) -> list[ev.RunRequested]:
    """Request a run of ``spec`` (version ``digest``) with the command's inputs.

    ``state`` is the run the command's id names. When it exists already, the command
    is a repeat under the same idempotency key: the same request gives nothing new (the
    caller answers with the existing run), a different one is refused."""
    try:
        inputs = spec.validate_inputs(command.inputs)
    except InputError as error:
        raise InvalidInputs(spec, error.problems) from None
    fingerprint = request_digest(command.workflow, command.version, command.inputs)
    if state.exists:
        assert state.request is not None
        if state.request.request_digest != fingerprint:
            raise IdempotencyConflict(command.idempotency_key or "", state.run_id)
        return []
    return [
        ev.RunRequested(
            workflow=spec.name,
            version=spec.version,
            digest=digest,
            inputs=inputs,
            request_digest=fingerprint,
            idempotency_key=command.idempotency_key,
            trigger=command.trigger,
        )
    ]


# -- forks -----------------------------------------------------------------------------

FORK_REQUEST_MAX_BYTES = 512 * 1024
"""A fork's ``run.requested`` (its changes and inputs) as JSON: half of NATS's 1 MiB
``max_payload``, leaving room for the envelope, as a registered workflow's limit does."""


def merge_changes(
    earlier: Sequence[ev.NodeChange], change: ev.NodeChange | None
) -> tuple[ev.NodeChange, ...]:
    """``earlier`` (a parent fork's changes) with ``change`` laid over them: one entry per
    node, where a field ``change`` leaves unset keeps the earlier value."""
    if change is None:
        return tuple(earlier)
    merged = list(earlier)
    for index, old in enumerate(merged):
        if old.node_id == change.node_id:
            merged[index] = ev.NodeChange(
                node_id=change.node_id,
                model=change.model or old.model,
                prompt=change.prompt or old.prompt,
            )
            return tuple(merged)
    return (*merged, change)


def fork_spec(base: WorkflowSpec, changes: Sequence[ev.NodeChange]) -> WorkflowSpec:
    """The registered version ``base`` with ``changes`` applied (each one replaces its
    node's ``model`` and/or ``prompt``), validated as a registered workflow is: every
    problem with its path, as ``InvalidWorkflow``. ``base`` itself without changes."""
    if not changes:
        return base
    data = json.loads(base.canonical_json())
    nodes = {node["id"]: node for node in data["nodes"]}
    for change in changes:
        node = nodes[change.node_id]
        if change.model is not None:
            node["model"] = change.model
        if change.prompt is not None:
            node["prompt"] = change.prompt
    try:
        spec = spec_from_dict(data, filename=f"{base.name} v{base.version} (fork)")
    except SpecError as error:
        raise InvalidWorkflow(error) from None
    size = len(spec.canonical_json().encode())
    if size > WORKFLOW_MAX_BYTES:
        raise WorkflowTooLarge(size)
    return spec


def fork_digest(command: ForkRun) -> str:
    """The fingerprint of a fork request, to tell a retry from a different request."""
    text = json.dumps(
        {
            "fork": command.run_id,
            "at": command.at,
            "model": command.model,
            "prompt": command.prompt,
            "inputs": command.inputs,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def decide_fork(
    state: RunState,
    parent: RunState,
    parent_events: Sequence[tuple[EventPayload, int]],
    base: WorkflowSpec,
    base_digest: str,
    command: ForkRun,
    now: datetime,
) -> list[EventPayload]:
    """The new run's first events: its request (linked to ``parent``), a copy of each
    node completion the parent recorded before ``command.at`` first started (with its
    ``run.node.started``, duration 0: the fork spent nothing on it), then
    ``run.fork.prepared``, its work item.

    ``parent_events`` are the parent's payloads with their stream sequences, in order;
    ``base`` is the registered version the parent's request names (``base_digest``
    its digest). ``state`` is the run the new id names: when it exists, the command is
    a repeat under the same idempotency key (same request: nothing new; another: refused).
    """
    if not parent.exists:
        raise RunNotFound(parent.run_id)
    assert parent.request is not None
    earlier = parent.request.fork.changes if parent.request.fork is not None else ()
    parent_spec = fork_spec(base, earlier)
    if command.at not in {node.id for node in parent_spec.nodes}:
        raise NodeNotInWorkflow(command.at, parent_spec)
    node = parent_spec.node(command.at)
    change = None
    if command.model is not None or command.prompt is not None:
        if not isinstance(node, LlmNode):
            raise NotAnLlmNode(node.id, node.type, "model" if command.model else "prompt")
        change = ev.NodeChange(node_id=node.id, model=command.model, prompt=command.prompt)
    first_start = next(
        (
            seq
            for payload, seq in parent_events
            if type(payload) is ev.NodeStarted and payload.node_id == command.at
        ),
        None,
    )
    if first_start is None:
        raise NodeNeverStarted(parent.run_id, command.at)
    changes = merge_changes(earlier, change)
    spec = fork_spec(base, changes)
    try:
        inputs = spec.validate_inputs({**parent.request.inputs, **command.inputs})
    except InputError as error:
        raise InvalidInputs(spec, error.problems) from None
    fingerprint = fork_digest(command)
    if state.exists:
        assert state.request is not None
        if state.request.request_digest != fingerprint:
            raise IdempotencyConflict(command.idempotency_key or "", state.run_id)
        return []
    request = ev.RunRequested(
        workflow=parent.request.workflow,
        version=parent.request.version,
        digest=spec.digest() if changes else base_digest,
        inputs=inputs,
        request_digest=fingerprint,
        idempotency_key=command.idempotency_key,
        trigger=command.trigger,
        fork=ev.ForkLink(
            run_id=parent.run_id,
            at=command.at,
            changes=changes,
            inputs=tuple(sorted(command.inputs)),
        ),
    )
    size = len(request.model_dump_json().encode())
    if size > FORK_REQUEST_MAX_BYTES:
        raise ForkTooLarge(size)
    reused: list[EventPayload] = []
    count = 0
    assigned: dict[tuple[str, int | None], ev.AgentTaskAssigned] = {}
    for payload, seq in parent_events:
        if seq >= first_start:
            break
        if type(payload) is ev.AgentTaskAssigned:
            assigned[(payload.node_id, payload.iteration)] = payload
        elif type(payload) is ev.NodeCompleted:
            count += 1
            reused += _reused_completion(parent_spec, payload, assigned)
    return [request, *reused, ev.ForkPrepared(reused=count)]


def _reused_completion(
    spec: WorkflowSpec,
    completed: ev.NodeCompleted,
    assigned: dict[tuple[str, int | None], ev.AgentTaskAssigned],
) -> list[EventPayload]:
    """A parent's completion as the fork records it: started, (for an agent node that
    writes memory under its agent's name, the agent it ran on: replaying the node writes
    that memory again, and needs the name) completed in no time."""
    node = spec.node(completed.node_id)
    copied: list[EventPayload] = [
        ev.NodeStarted(
            node_id=completed.node_id,
            node_type=node.type,
            attempt=completed.attempt,
            iteration=completed.iteration,
        )
    ]
    task = assigned.get((completed.node_id, completed.iteration))
    memory = node.memory
    if task is not None and memory is not None and memory.write and memory.namespace is None:
        copied.append(task)
    copied.append(completed.model_copy(update={"duration_ms": 0.0}))
    return copied


def decide_claim(state: RunState, command: ClaimRun, now: datetime) -> list[ev.RunClaimed]:
    """Take the run for execution, or nothing when it does not need this replica
    (ended, held by another replica for another item, waiting, paused)."""
    if not state.should_execute(command.work_seq):
        return []
    return [
        ev.RunClaimed(
            executor=command.executor,
            pid=command.pid,
            resumed=state.claims > 0,
            work_seq=command.work_seq,
        )
    ]


def decide_resume(state: RunState, reason: str) -> list[ev.RunResumed]:
    """A paused run made runnable again: its ``run.resumed`` is the next work item, which
    any replica claims. Nothing for a run that is not paused (resumed by another replica
    already, cancelled, ...)."""
    if state.status != "paused":
        return []
    return [ev.RunResumed(reason=reason)]


def decide_cancel(state: RunState, command: CancelRun, now: datetime) -> list[EventPayload]:
    if not state.exists:
        raise RunNotFound(state.run_id)
    if state.ended:
        raise RunAlreadyEnded(state.run_id, state.status)
    requested = ev.CancelRequested(reason=command.reason)
    if state.held:
        # The holder stops at its next safe point and records run.cancelled.
        return [] if state.cancel_requested else [requested]
    # Nobody executes it (pending, waiting for an approval, paused): end it now. (A
    # request may be there already: its holder let go before taking it in.)
    cancelled = ev.RunCancelled(
        reason=command.reason or state.cancel_reason or "cancelled",
        duration_ms=state.duration_ms(now),
    )
    return [cancelled] if state.cancel_requested else [requested, cancelled]


def decide_approval(state: RunState, command: ApproveNode, now: datetime) -> ev.ApprovalDecided:
    if not state.exists:
        raise RunNotFound(state.run_id)
    if state.ended:
        raise RunAlreadyEnded(state.run_id, state.status)
    waiting = [a for a in state.pending_approvals() if a.node_id == command.node_id]
    if not waiting:
        raise NotWaitingForApproval(
            state.run_id, command.node_id, sorted({a.node_id for a in state.pending_approvals()})
        )
    latest = max(waiting, key=lambda a: a.iteration)
    return ev.ApprovalDecided(
        node_id=command.node_id,
        approved=command.approve,
        comment=command.comment,
        iteration=latest.iteration,
    )


def decide_fail_unregistered(state: RunState, now: datetime) -> list[ev.RunFailed]:
    """The run's workflow version (name, version and digest) is not registered: it
    cannot execute, and says why."""
    assert state.request is not None
    request = state.request
    error = ev.ErrorInfo(
        type="workflow_not_found",
        message=f"workflow {request.workflow!r} version {request.version} "
        f"(digest {request.digest[:12]}) is not registered",
    )
    return [ev.RunFailed(error=error, duration_ms=state.duration_ms(now))]


# -- the workflow aggregate ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkflowState:
    """Every registered version of one workflow name, in registration order."""

    name: str
    version: int = 0  # stream sequence of the last event folded
    versions: tuple[WorkflowVersionRegistered, ...] = ()

    def get(self, version: int | None = None) -> WorkflowVersionRegistered | None:
        """A version (the highest when ``version`` is None), or None."""
        if not self.versions:
            return None
        if version is None:
            return max(self.versions, key=lambda p: p.version)
        return next((p for p in self.versions if p.version == version), None)

    def known_versions(self) -> list[int]:
        return sorted(p.version for p in self.versions)


def evolve_workflow(state: WorkflowState, payload: EventPayload, sequence: int) -> WorkflowState:
    """The workflow after one more event."""
    versions = state.versions
    if isinstance(payload, WorkflowVersionRegistered):
        versions = (*versions, payload)
    return replace(state, version=max(state.version, sequence), versions=versions)


def parse_workflow(command: RegisterWorkflow) -> WorkflowSpec:
    """The command's source as a spec, or every problem in it with its path and line."""
    try:
        return load_spec(command.source, filename="<command>")
    except SpecError as error:
        raise InvalidWorkflow(error) from None


def decide_register(
    state: WorkflowState, spec: WorkflowSpec, command: RegisterWorkflow, now: datetime
) -> list[WorkflowVersionRegistered]:
    """Register ``spec`` (parsed from the command's source) as a new version.

    Versions are immutable: registering the same content again gives nothing new (the
    caller answers "not created"), different content under a taken version is refused."""
    digest = spec.digest()
    canonical = spec.canonical_json()
    size = len(canonical.encode()) + len(command.source.encode())
    if size > WORKFLOW_MAX_BYTES:
        raise WorkflowTooLarge(size)
    same = state.get(spec.version)
    if same is not None:
        if same.digest == digest:
            return []
        raise VersionAlreadyRegistered(
            spec.name, spec.version, same.digest, max(state.known_versions()) + 1
        )
    return [
        WorkflowVersionRegistered(
            name=spec.name,
            version=spec.version,
            digest=digest,
            spec=json.loads(canonical),
            source=command.source,
            source_format=command.source_format,
        )
    ]


def require_version(state: WorkflowState, version: int | None) -> WorkflowVersionRegistered:
    """The version a start asks for (the highest when None), or why there is none."""
    found = state.get(version)
    if found is not None:
        return found
    if not state.versions:
        raise WorkflowNotFound(state.name)
    raise VersionNotFound(state.name, version, state.known_versions())
