"""A run's decisions, as comparable steps: what the engine decided, not when or where.

Kept: event types, node ids, iterations, attempts, outputs, errors, retries, the model
calls' order and outcome, approval messages, agent tasks' tools and arguments, the end.
Left out: ids, timestamps, durations, tokens and latencies, which executor and agent,
and the events that came from outside the engine (requests, claims, decisions, cancels,
pauses and resumptions, memory reads).

Parallel branches interleave in whatever order their work finished, so steps are
compared per lane (a node, or the run itself for its end): the replay matches when each
lane's steps are the same in the same order. The first divergence is reported at the
first recorded step, in stream order, whose lane went another way.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from chiffon.events import Envelope
from chiffon.events import runs as ev

RUN_LANE = ""
# An answer the parser refused is not recorded, so its replay is refused with another
# message: only the error's type is compared for these.
UNRECORDED_MESSAGES = frozenset({"invalid_output"})


_TEXT_ONLY: Any = object()  # a step made from its canonical text alone


class Step:
    """One decision of a run: its event type, its lane (node id, or "" for the run) and
    what was decided (``detail``: canonical JSON).

    A step made by ``steps`` keeps what was decided as the objects themselves and writes
    its JSON only when asked: two steps match when those objects are the same JSON
    values (``same_json``), and only steps that do not are compared as JSON text.
    Writing each side's decisions as canonical JSON was 7% of a replay's CPU."""

    __slots__ = ("_decided", "_detail", "lane", "sequence", "type")

    def __init__(
        self,
        type: str,
        lane: str,
        detail: str | None = None,
        sequence: int | None = None,  # where a recorded step is in the stream
        *,
        decided: Any = _TEXT_ONLY,
    ) -> None:
        if detail is None and decided is _TEXT_ONLY:
            raise TypeError("a step needs its detail or what was decided")
        self.type = type
        self.lane = lane
        self.sequence = sequence
        self._detail = detail
        self._decided = decided

    @property
    def detail(self) -> str:
        if self._detail is None:
            self._detail = _canonical(self._decided)
        return self._detail

    def key(self) -> tuple[str, str, str]:
        return self.type, self.lane, self.detail

    def matches(self, other: Step) -> bool:
        """The same decision (``key`` equal), found without JSON when it can be."""
        if self.type != other.type or self.lane != other.lane:
            return False
        if (
            self._decided is not _TEXT_ONLY
            and other._decided is not _TEXT_ONLY
            and same_json(self._decided, other._decided)
        ):
            return True
        return self.detail == other.detail

    def describe(self) -> str:
        where = f" (stream sequence {self.sequence})" if self.sequence is not None else ""
        node = f" node {self.lane}" if self.lane else ""
        return f"{self.type}{node} {self.detail}{where}"

    def _fields(self) -> tuple[str, str, str, int | None]:
        return self.type, self.lane, self.detail, self.sequence

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Step):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"Step(type={self.type!r}, lane={self.lane!r}, detail={self.detail!r},"
            f" sequence={self.sequence!r})"
        )


def same_json(first: Any, second: Any) -> bool:
    """True when ``first`` and ``second`` are certainly written as the same canonical
    JSON: both made of the same JSON types (exactly ``dict`` with ``str`` keys, ``list``,
    ``tuple``, ``str``, ``int``, ``bool``, ``float``, None) holding equal values. False
    means "not known": the caller compares the JSON. Plain equality would not do:
    ``1 == 1.0 == True`` and ``0.0 == -0.0``, each written otherwise."""
    kind = type(first)
    if kind is not type(second):
        return False
    if kind is str or kind is int or kind is bool or first is None:
        return bool(first == second)
    if kind is dict:
        if len(first) != len(second):
            return False
        for key, value in first.items():
            if type(key) is not str or key not in second:
                return False
            if not same_json(value, second[key]):
                return False
        return True
    if kind is list or kind is tuple:
        return len(first) == len(second) and all(
            same_json(a, b) for a, b in zip(first, second, strict=True)
        )
    if kind is float:
        # Equal floats are the same bits, but for the sign of zero (NaN is never equal).
        return bool(first == second) and (
            first != 0.0 or math.copysign(1.0, first) == math.copysign(1.0, second)
        )
    return False


@dataclass(frozen=True)
class Divergence:
    """The first step where the replay went another way than the record."""

    recorded: Step | None
    replayed: Step | None

    def describe(self) -> str:
        recorded = self.recorded.describe() if self.recorded else "nothing more"
        replayed = self.replayed.describe() if self.replayed else "nothing"
        return f"recorded: {recorded}\nreplayed: {replayed}"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _error(error: ev.ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    if error.type in UNRECORDED_MESSAGES:
        return {"type": error.type}
    return {"type": error.type, "message": error.message}


def step_of(payload: Any) -> tuple[str, str, dict[str, Any]] | None:
    """(lane, type, detail) of one event's decision, or None for an outside event."""
    if isinstance(payload, ev.NodeStarted):
        return (
            payload.node_id,
            "run.node.started",
            {
                "iteration": payload.iteration,
                "attempt": payload.attempt,
            },
        )
    if isinstance(payload, ev.NodeCompleted):
        return (
            payload.node_id,
            "run.node.completed",
            {
                "iteration": payload.iteration,
                "attempt": payload.attempt,
                "outputs": payload.outputs,
            },
        )
    if isinstance(payload, ev.NodeFailed):
        return (
            payload.node_id,
            "run.node.failed",
            {
                "iteration": payload.iteration,
                "attempt": payload.attempt,
                "error": _error(payload.error),
                "will_retry": payload.will_retry,
            },
        )
    if isinstance(payload, ev.LlmCalled):
        return (
            payload.node_id,
            "run.llm.called",
            {
                "attempt": payload.attempt,
                "fallback_index": payload.fallback_index,
                "ok": payload.ok,
            },
        )
    if isinstance(payload, ev.ApprovalRequested):
        return (
            payload.node_id,
            "run.approval.requested",
            {
                "iteration": payload.iteration,
                "message": payload.message,
            },
        )
    if isinstance(payload, ev.AgentTaskAssigned):
        return (
            payload.node_id,
            "run.agent_task.assigned",
            {
                "iteration": payload.iteration,
                "attempt": payload.attempt,
                "tool": payload.tool,
                "arguments": payload.arguments,
            },
        )
    if isinstance(payload, ev.AgentTaskFinished):
        return (
            payload.node_id,
            "run.agent_task.finished",
            {
                "attempt": payload.attempt,
                "ok": payload.ok,
                "exit_code": payload.exit_code,
                "error": _error(payload.error),
            },
        )
    if isinstance(payload, ev.RunCompleted):
        return RUN_LANE, "run.completed", {"outputs": payload.outputs}
    if isinstance(payload, ev.RunFailed):
        return RUN_LANE, "run.failed", {"error": _error(payload.error)}
    if isinstance(payload, ev.RunCancelled):
        return RUN_LANE, "run.cancelled", {}
    return None


def steps(events: list[tuple[Envelope[Any], int | None]]) -> list[Step]:
    """The decisions among ``events`` (stream order kept)."""
    found: list[Step] = []
    for envelope, sequence in events:
        decided = step_of(envelope.payload)
        if decided is not None:
            lane, kind, detail = decided
            found.append(Step(kind, lane, None, sequence, decided=detail))
    return found


def first_divergence(
    recorded: list[Step], replayed: list[Step], *, open_end: bool = False
) -> Divergence | None:
    """The first recorded step whose lane the replay did not follow (see the module), or
    the first replayed step beyond the record; None when they agree. The replayed side of
    a divergence is that lane's step, or, when the lane has none left, the first step the
    replay took that the record does not have. ``open_end``: the record stops before the
    run's end (cancelled, or still waiting), so the replay's own stop is not compared."""
    lanes: dict[str, deque[int]] = {}
    for index, mine in enumerate(replayed):
        lanes.setdefault(mine.lane, deque()).append(index)
    matched: set[int] = set()
    for step in recorded:
        if open_end and step.type == "run.cancelled":
            continue
        lane = lanes.get(step.lane)
        position = lane.popleft() if lane else None
        if position is None:
            instead = next((i for i in range(len(replayed)) if i not in matched), None)
            return Divergence(step, None if instead is None else replayed[instead])
        if not replayed[position].matches(step):
            return Divergence(step, replayed[position])
        matched.add(position)
    extra = next((i for i in range(len(replayed)) if i not in matched), None)
    return None if extra is None else Divergence(None, replayed[extra])
