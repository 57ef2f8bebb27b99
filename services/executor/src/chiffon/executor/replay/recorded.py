"""A recorded run, indexed for its replay: what the model answered, what each agent task
returned, what each approval decided and what each memory read found, per node execution.

Only the inputs from outside the engine are taken from the record; everything the engine
decides (which node runs next, its outputs, its retries, the run's end) is recomputed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from chiffon.events import Envelope
from chiffon.events import runs as ev
from chiffon.events.memory import MemoryRead

NodeKey = tuple[str, int]  # (node_id, iteration)


class RecordError(Exception):
    """The recorded run cannot be replayed as it is stored (events missing or unreadable)."""


@dataclass
class RecordedCall:
    """One recorded model call, with the text that reproduces the node's outputs."""

    called: ev.LlmCalled
    outcome: ev.NodeCompleted | ev.NodeFailed | None


@dataclass
class RecordedTask:
    """One recorded agent task: its assignment and its result (None: no result stored)."""

    assigned: ev.AgentTaskAssigned
    finished: ev.AgentTaskFinished | None
    outputs: dict[str, Any] | None  # the node's outputs when the task's attempt completed


@dataclass
class RecordedRun:
    """The events of one run, in stream order, with their sequences."""

    run_id: str
    events: list[tuple[Envelope[Any], int]]
    request: ev.RunRequested
    end: ev.RunCompleted | ev.RunFailed | ev.RunCancelled | None
    calls: dict[NodeKey, list[RecordedCall]] = field(default_factory=dict)
    tasks: dict[str, RecordedTask] = field(default_factory=dict)  # by task id
    decisions: dict[NodeKey, tuple[ev.ApprovalDecided, str]] = field(default_factory=dict)
    started: set[tuple[str, int, int]] = field(default_factory=set)  # node, iteration, attempt

    @property
    def ended(self) -> bool:
        """Completed or failed: the engine decided the end, so the replay must reach it.
        A cancelled run, or one still open, is replayed as far as it went."""
        return isinstance(self.end, (ev.RunCompleted, ev.RunFailed))

    @property
    def prefix(self) -> list[tuple[Envelope[Any], int]]:
        """What the replay starts from: the request, the first claim and the memory reads
        (the values memory held then, used again as recorded). A fork's reused node
        completions, everything up to its ``run.fork.prepared``, are given too: the
        parent's run recorded how they were decided, and the fork never ran them."""
        kept: list[tuple[Envelope[Any], int]] = []
        claimed = False
        given = self.request.fork is not None
        for envelope, sequence in self.events:
            payload = envelope.payload
            if given:
                kept.append((envelope, sequence))
                given = not isinstance(payload, ev.ForkPrepared)
            elif isinstance(payload, ev.RunRequested) or isinstance(payload, MemoryRead):
                kept.append((envelope, sequence))
            elif isinstance(payload, ev.RunClaimed) and not claimed:
                kept.append((envelope, sequence))
                claimed = True
        return kept


def index_run(run_id: str, events: list[tuple[Envelope[Any], int]]) -> RecordedRun:
    """Index ``events`` (a run's, in stream order, node outputs stored by reference already
    resolved into ``outputs``). Raises ``RecordError`` when the run has no request."""
    if not events:
        raise RecordError(f"run {run_id} has no events")
    first = events[0][0].payload
    if not isinstance(first, ev.RunRequested):
        raise RecordError(
            f"run {run_id}: its first event is {events[0][0].type} (sequence {events[0][1]}),"
            " not run.requested: the stream lost events"
        )
    run = RecordedRun(run_id=run_id, events=events, request=first, end=None)
    # A call's iteration is not on its event: it is the one of the attempt's outcome,
    # appended with it, or of the attempt's start before it.
    latest_iteration: dict[str, int] = {}
    outcomes: dict[tuple[str, int, int], ev.NodeCompleted | ev.NodeFailed] = {}
    assigned: dict[str, ev.AgentTaskAssigned] = {}
    finished: dict[str, ev.AgentTaskFinished] = {}
    call_order: list[tuple[NodeKey, ev.LlmCalled]] = []
    pending_by_attempt: dict[tuple[str, int], list[int]] = defaultdict(list)
    for envelope, _sequence in events:
        p = envelope.payload
        if isinstance(p, ev.NodeStarted):
            latest_iteration[p.node_id] = p.iteration
            run.started.add((p.node_id, p.iteration, p.attempt))
        elif isinstance(p, ev.LlmCalled):
            call_order.append(((p.node_id, latest_iteration.get(p.node_id, 1)), p))
            pending_by_attempt[(p.node_id, p.attempt)].append(len(call_order) - 1)
        elif isinstance(p, (ev.NodeCompleted, ev.NodeFailed)):
            outcomes[(p.node_id, p.iteration, p.attempt)] = p
            for position in pending_by_attempt.pop((p.node_id, p.attempt), []):
                call_order[position] = ((p.node_id, p.iteration), call_order[position][1])
        elif isinstance(p, ev.ApprovalDecided):
            by = str(envelope.actor)
            run.decisions.setdefault((p.node_id, p.iteration), (p, by))
        elif isinstance(p, ev.AgentTaskAssigned):
            assigned[p.task_id] = p
        elif isinstance(p, ev.AgentTaskFinished):
            finished[p.task_id] = p
        elif isinstance(p, (ev.RunCompleted, ev.RunFailed, ev.RunCancelled)):
            run.end = p
    for (node_id, iteration), called in call_order:
        outcome = outcomes.get((node_id, iteration, called.attempt))
        run.calls.setdefault((node_id, iteration), []).append(RecordedCall(called, outcome))
    for task_id, task in assigned.items():
        outputs = None
        if task.iteration is not None and task.attempt is not None:
            done = outcomes.get((task.node_id, task.iteration, task.attempt))
            if isinstance(done, ev.NodeCompleted):
                outputs = dict(done.outputs)
        run.tasks[task_id] = RecordedTask(task, finished.get(task_id), outputs)
    return run


def reply_text(call: RecordedCall, node_id: str, structured: bool) -> str:
    """The model's answer that makes the node's parser give the recorded outputs: the
    text itself for a plain node, the outputs as JSON for one with ``output``. An
    answer the parser refused is not recorded: an empty text is refused again."""
    outcome = call.outcome
    if not isinstance(outcome, ev.NodeCompleted):
        return ""
    if not structured:
        value = outcome.outputs.get(node_id)
        return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(outcome.outputs, ensure_ascii=False)
