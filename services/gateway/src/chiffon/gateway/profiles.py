"""Where a run's time went, folded from its events: no I/O, so that the unit tests can
hand it events made on the spot.

Every figure comes from the events' own timestamps (``occurred_at``) and the latencies
they record, so that a profile read twice, or on another replica, is the same:

- a node attempt (a *span*) lasts from its ``run.node.started`` to its
  ``run.node.completed`` or ``run.node.failed``; one still open ends, for now, at the
  run's last event;
- in it, time *waiting for the model* is the sum of its ``run.llm.called`` latencies,
  *waiting for an agent* the time from each of its tasks' ``run.agent_task.assigned``
  to ``run.agent_task.finished``, *waiting for a person* the time from
  ``run.approval.requested`` to ``run.approval.decided``, *paused* the time from a
  ``run.paused`` naming the node (no agent could take its task, or a budget held its
  model call) to ``run.resumed``; what is left is Chiffon's own (templating,
  validation, appends, scheduling);
- a node's *backoff* is the time between a failed attempt and the next one (the retry
  policy's delay), counted in its wall time but not as Chiffon's own;
- the run lasts from ``run.requested`` to its ending event (or its last event, while
  it runs), and a node's *share* is its wall time over the run's. Nodes that ran side
  by side can together hold more than 100%.

The *bottleneck* is the node holding more than half of the run, if one does.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chiffon.events import Envelope
from chiffon.events.runs import RUN_ENDING_STATUS

BOTTLENECK_SHARE = 0.5
"""A node holding more than this share of the run's wall time is its bottleneck."""

SpanStatus = Literal["succeeded", "failed", "retried", "running"]


class SpanProfile(BaseModel):
    """One attempt of one iteration of a node."""

    model_config = ConfigDict(frozen=True)

    node_id: str
    node_type: str
    iteration: int
    attempt: int
    status: SpanStatus
    start_ms: float = Field(description="From the run's start to this attempt's start")
    wall_ms: float
    model_ms: float
    agent_ms: float
    human_ms: float
    paused_ms: float
    own_ms: float
    llm_calls: int


class NodeProfile(BaseModel):
    """A node's attempts and iterations together."""

    model_config = ConfigDict(frozen=True)

    node_id: str
    node_type: str
    status: SpanStatus = Field(description="Of its last attempt")
    attempts: int
    iterations: int
    retries: int = Field(description="Attempts that failed and were tried again")
    start_ms: float
    wall_ms: float = Field(description="Its attempts' wall time plus the backoff between them")
    share: float = Field(description="wall_ms over the run's wall time (0 to 1, or more)")
    model_ms: float
    agent_ms: float
    human_ms: float
    paused_ms: float = Field(description="Paused waiting for an agent's capacity or a budget")
    backoff_ms: float
    own_ms: float = Field(description="Chiffon's own time: wall less every wait")
    llm_calls: int
    bottleneck: bool


class RunProfilePublic(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    workflow: str | None
    version: int | None
    status: str = Field(description="running until the run's ending event")
    started_at: datetime | None
    ended_at: datetime | None
    wall_ms: float
    queued_ms: float = Field(description="From run.requested to the first run.claimed")
    model_ms: float
    agent_ms: float
    human_ms: float
    paused_ms: float
    llm_calls: int
    bottleneck: str | None = Field(description="The node over half of the run, if any")
    nodes: list[NodeProfile]
    spans: list[SpanProfile] = Field(description="Every attempt, in start order: a waterfall")


@dataclass
class _Span:
    node_id: str
    node_type: str
    iteration: int
    attempt: int
    started: datetime
    ended: datetime | None = None
    status: SpanStatus = "running"
    model_ms: float = 0.0
    agent_ms: float = 0.0
    human_ms: float = 0.0
    paused_ms: float = 0.0
    llm_calls: int = 0


@dataclass
class _Fold:
    run_id: str
    workflow: str | None = None
    version: int | None = None
    requested: datetime | None = None
    claimed: datetime | None = None
    ended: datetime | None = None
    last: datetime | None = None
    status: str = "running"
    spans: list[_Span] = field(default_factory=list)
    open: dict[str, list[_Span]] = field(default_factory=dict)  # by node id
    tasks: dict[str, tuple[str, int | None, datetime]] = field(default_factory=dict)
    approvals: dict[tuple[str, int], datetime] = field(default_factory=dict)
    paused: tuple[str, datetime] | None = None  # the node a pause names, and since when

    def span_of(self, node_id: str, attempt: int | None = None) -> _Span | None:
        """The node's open attempt (the given one if it is open), latest first."""
        spans = self.open.get(node_id) or []
        for span in reversed(spans):
            if attempt is None or span.attempt == attempt:
                return span
        return spans[-1] if spans else None

    def unpause(self, at: datetime) -> None:
        if self.paused is not None:
            span = self.span_of(self.paused[0])
            if span is not None:
                span.paused_ms += _ms(self.paused[1], at)
            self.paused = None

    def close(self, node_id: str, attempt: int, iteration: int, at: datetime) -> _Span | None:
        spans = self.open.get(node_id) or []
        for span in reversed(spans):
            if span.attempt == attempt and span.iteration == iteration:
                spans.remove(span)
                span.ended = at
                return span
        return None


def _ms(start: datetime, end: datetime) -> float:
    """Milliseconds from ``start`` to ``end``; 0 when replicas' clocks disagree."""
    return max(0.0, (end - start).total_seconds() * 1000)


def _fold(run_id: str, events: Iterable[Envelope[Any]]) -> _Fold:
    fold = _Fold(run_id)
    for event in events:
        at = event.occurred_at
        fold.last = at if fold.last is None else max(fold.last, at)
        payload = event.payload
        kind = event.type
        if kind == "run.requested":
            fold.requested = at
            fold.workflow, fold.version = payload.workflow, payload.version
        elif kind == "run.claimed":
            fold.claimed = fold.claimed or at
        elif kind == "run.node.started":
            begun = _Span(
                payload.node_id, payload.node_type, payload.iteration, payload.attempt, at
            )
            fold.spans.append(begun)
            fold.open.setdefault(payload.node_id, []).append(begun)
        elif kind == "run.llm.called":
            span = fold.span_of(payload.node_id, payload.attempt)
            if span is not None:
                span.model_ms += payload.latency_ms
                span.llm_calls += 1
        elif kind == "run.agent_task.assigned":
            fold.tasks[payload.task_id] = (payload.node_id, payload.attempt, at)
        elif kind == "run.agent_task.finished":
            assigned = fold.tasks.pop(payload.task_id, None)
            if assigned is not None:
                span = fold.span_of(assigned[0], assigned[1])
                if span is not None:
                    span.agent_ms += _ms(assigned[2], at)
        elif kind == "run.approval.requested":
            fold.approvals[(payload.node_id, payload.iteration)] = at
        elif kind == "run.approval.decided":
            asked = fold.approvals.pop((payload.node_id, payload.iteration), None)
            span = fold.span_of(payload.node_id)
            if asked is not None and span is not None:
                span.human_ms += _ms(asked, at)
        elif kind == "run.paused":
            fold.paused = (payload.node_id, at) if payload.node_id else None
        elif kind == "run.resumed":
            fold.unpause(at)
        elif kind == "run.node.completed":
            closed = fold.close(payload.node_id, payload.attempt, payload.iteration, at)
            if closed is not None:
                closed.status = "succeeded"
        elif kind == "run.node.failed":
            closed = fold.close(payload.node_id, payload.attempt, payload.iteration, at)
            if closed is not None:
                closed.status = "retried" if payload.will_retry else "failed"
        elif kind in RUN_ENDING_STATUS:
            fold.unpause(at)  # a run cancelled while paused
            fold.ended = at
            fold.status = RUN_ENDING_STATUS[kind]
    return fold


def _span_public(span: _Span, origin: datetime, now: datetime) -> SpanProfile:
    wall = _ms(span.started, span.ended or now)
    # Parallel calls inside one attempt may wait longer in sum than the attempt lasted.
    model = min(span.model_ms, wall)
    agent = min(span.agent_ms, wall - model)
    human = min(span.human_ms, wall - model - agent)
    paused = min(span.paused_ms, wall - model - agent - human)
    return SpanProfile(
        node_id=span.node_id,
        node_type=span.node_type,
        iteration=span.iteration,
        attempt=span.attempt,
        status=span.status,
        start_ms=_ms(origin, span.started),
        wall_ms=wall,
        model_ms=model,
        agent_ms=agent,
        human_ms=human,
        paused_ms=paused,
        own_ms=max(0.0, wall - model - agent - human - paused),
        llm_calls=span.llm_calls,
    )


def _backoff(spans: Sequence[tuple[_Span, SpanProfile]]) -> float:
    """Time between a retried attempt's end and the next attempt of the same iteration."""
    total = 0.0
    for (before, _), (after, _) in zip(spans, spans[1:], strict=False):
        if before.status == "retried" and before.ended and after.iteration == before.iteration:
            total += _ms(before.ended, after.started)
    return total


def _node_public(
    spans: Sequence[tuple[_Span, SpanProfile]], run_wall: float, backoff: float
) -> NodeProfile:
    shown = [public for _, public in spans]
    wall = sum(s.wall_ms for s in shown) + backoff
    waits = [
        sum(getattr(s, name) for s in shown)
        for name in ("model_ms", "agent_ms", "human_ms", "paused_ms")
    ]
    share = wall / run_wall if run_wall > 0 else 0.0
    return NodeProfile(
        node_id=shown[0].node_id,
        node_type=shown[0].node_type,
        status=shown[-1].status,
        attempts=len(shown),
        iterations=len({s.iteration for s in shown}),
        retries=sum(1 for s in shown if s.status == "retried"),
        start_ms=shown[0].start_ms,
        wall_ms=wall,
        share=share,
        model_ms=waits[0],
        agent_ms=waits[1],
        human_ms=waits[2],
        paused_ms=waits[3],
        backoff_ms=backoff,
        own_ms=max(0.0, wall - backoff - sum(waits)),
        llm_calls=sum(s.llm_calls for s in shown),
        bottleneck=share > BOTTLENECK_SHARE,
    )


def profile_run(run_id: str, events: Iterable[Envelope[Any]]) -> RunProfilePublic:
    """The run's profile from its events, in stream order."""
    fold = _fold(run_id, events)
    origin = fold.requested or (fold.spans[0].started if fold.spans else None)
    now = fold.ended or fold.last
    if origin is None or now is None:
        return RunProfilePublic(
            run_id=run_id,
            workflow=fold.workflow,
            version=fold.version,
            status=fold.status,
            started_at=None,
            ended_at=None,
            wall_ms=0.0,
            queued_ms=0.0,
            model_ms=0.0,
            agent_ms=0.0,
            human_ms=0.0,
            paused_ms=0.0,
            llm_calls=0,
            bottleneck=None,
            nodes=[],
            spans=[],
        )
    run_wall = _ms(origin, now)
    paired = [(span, _span_public(span, origin, now)) for span in fold.spans]
    by_node: dict[str, list[tuple[_Span, SpanProfile]]] = {}
    for pair in paired:
        by_node.setdefault(pair[0].node_id, []).append(pair)
    nodes = [
        _node_public(spans, run_wall, _backoff(spans)) for spans in by_node.values()
    ]  # dicts keep insertion order: nodes in the order they first started
    top = max(nodes, key=lambda n: n.share, default=None)
    shown = [public for _, public in paired]
    return RunProfilePublic(
        run_id=run_id,
        workflow=fold.workflow,
        version=fold.version,
        status=fold.status,
        started_at=origin,
        ended_at=fold.ended,
        wall_ms=run_wall,
        queued_ms=_ms(origin, fold.claimed) if fold.claimed else 0.0,
        model_ms=sum(s.model_ms for s in shown),
        agent_ms=sum(s.agent_ms for s in shown),
        human_ms=sum(s.human_ms for s in shown),
        paused_ms=sum(s.paused_ms for s in shown),
        llm_calls=sum(s.llm_calls for s in shown),
        bottleneck=top.node_id if top is not None and top.bottleneck else None,
        nodes=nodes,
        spans=sorted(shown, key=lambda s: s.start_ms),
    )


# -- across runs ---------------------------------------------------------------------------


class Percentiles(BaseModel):
    model_config = ConfigDict(frozen=True)

    p50: float
    p95: float
    p99: float


class NodePercentiles(BaseModel):
    model_config = ConfigDict(frozen=True)

    node_id: str
    node_type: str
    runs: int = Field(description="Runs in which the node started")
    wall_ms: Percentiles
    model_ms: Percentiles
    agent_ms: Percentiles
    own_ms: Percentiles
    share: Percentiles
    retries: int = Field(description="Retried attempts, summed over the runs")


class WorkflowProfilePublic(BaseModel):
    model_config = ConfigDict(frozen=True)

    workflow: str
    runs: int = Field(description="Finished runs profiled (at most ``last``)")
    last: int
    wall_ms: Percentiles | None = Field(description="Of the runs; null when there were none")
    nodes: list[NodePercentiles]


def percentiles(values: Sequence[float]) -> Percentiles:
    """p50, p95 and p99, linearly interpolated between the closest ranks (numpy's
    default, ``statistics.quantiles(method="inclusive")``); a single value is all three."""
    if len(values) == 1:
        return Percentiles(p50=values[0], p95=values[0], p99=values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return Percentiles(p50=cuts[49], p95=cuts[94], p99=cuts[98])


def profile_workflow(
    workflow: str, last: int, profiles: Sequence[RunProfilePublic]
) -> WorkflowProfilePublic:
    """Per node, the spread of its figures over the runs' profiles."""
    per_node: dict[str, list[NodeProfile]] = {}
    for run in profiles:
        for node in run.nodes:
            per_node.setdefault(node.node_id, []).append(node)
    nodes = [
        NodePercentiles(
            node_id=node_id,
            node_type=found[0].node_type,
            runs=len(found),
            wall_ms=percentiles([n.wall_ms for n in found]),
            model_ms=percentiles([n.model_ms for n in found]),
            agent_ms=percentiles([n.agent_ms for n in found]),
            own_ms=percentiles([n.own_ms for n in found]),
            share=percentiles([n.share for n in found]),
            retries=sum(n.retries for n in found),
        )
        for node_id, found in per_node.items()
    ]
    return WorkflowProfilePublic(
        workflow=workflow,
        runs=len(profiles),
        last=last,
        wall_ms=percentiles([p.wall_ms for p in profiles]) if profiles else None,
        nodes=nodes,
    )
