"""Profiles and comparisons folded from events made here, with timestamps chosen so that
every figure is known in advance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from chiffon.events import CATALOG, Actor, EventPayload, new_event
from chiffon.events.runs import (
    AgentTaskAssigned,
    AgentTaskFinished,
    AgentTaskRequested,
    ApprovalDecided,
    ApprovalRequested,
    ErrorInfo,
    LlmCalled,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    RunClaimed,
    RunCompleted,
    RunPaused,
    RunRequested,
    RunResumed,
)
from chiffon.eventstore import ANY, AggregateKey, InMemoryEventStore
from chiffon.gateway.comparison import NodeCost, RunFacts, compare_runs, node_outputs
from chiffon.gateway.dashboard.waterfall import LABEL_WIDTH, ROW_HEIGHT, TRACK_WIDTH, waterfall
from chiffon.gateway.profile_reads import RunHistories
from chiffon.gateway.profiles import percentiles, profile_run, profile_workflow

T0 = datetime(2026, 12, 7, 12, tzinfo=UTC)
EXECUTOR = Actor.service("executor", 1)


class Events:
    """A run's events, each dated ``ms`` after T0."""

    def __init__(self, run_id: str = "run-1") -> None:
        self.run_id = run_id
        self.events: list[Any] = []

    def at(self, ms: float, payload: EventPayload) -> Events:
        self.events.append(
            new_event(
                payload,
                aggregate_id=self.run_id,
                actor=EXECUTOR,
                occurred_at=T0 + timedelta(milliseconds=ms),
            )
        )
        return self


def llm(node: str, attempt: int, latency: float) -> LlmCalled:
    return LlmCalled(
        node_id=node, attempt=attempt, provider="openai", model="gpt-x", latency_ms=latency
    )


def done(node: str, outputs: dict[str, Any], attempt: int = 1) -> NodeCompleted:
    return NodeCompleted(node_id=node, attempt=attempt, outputs=outputs, duration_ms=0)


def three_nodes(run_id: str = "run-1", *, answer: str = "hi", agent_ms: float = 4000) -> Events:
    """plan (llm, 600 ms: 500 of it the model's) -> build (agent, ``agent_ms`` + 1 s:
    assigned to finished ``agent_ms``) -> ship (approval, 1 s waiting for a person); the run ends 10 ms
    after ship."""
    build_end = 1700 + agent_ms
    return (
        Events(run_id)
        .at(0, RunRequested(workflow="triage", version=2, digest="d" * 64))
        .at(50, RunClaimed(executor="executor-1", pid=1))
        .at(100, NodeStarted(node_id="plan", node_type="llm", attempt=1))
        .at(690, llm("plan", 1, 300))
        .at(690, llm("plan", 1, 200))
        .at(700, done("plan", {"text": answer}))
        .at(700, NodeStarted(node_id="build", node_type="agent", attempt=1))
        .at(800, AgentTaskRequested(task_id="t1", node_id="build", attempt=1))
        .at(900, AgentTaskAssigned(task_id="t1", node_id="build", agent_id="a1", attempt=1))
        .at(900 + agent_ms, AgentTaskFinished(task_id="t1", node_id="build", ok=True))
        .at(build_end, done("build", {"ok": True}))
        .at(build_end, NodeStarted(node_id="ship", node_type="approval", attempt=1))
        .at(build_end, ApprovalRequested(node_id="ship", message="ship?"))
        .at(build_end + 1000, ApprovalDecided(node_id="ship", approved=True))
        .at(build_end + 1000, done("ship", {"approved": True}))
        .at(build_end + 1010, RunCompleted(duration_ms=0))
    )


def test_each_node_splits_its_wall_time_into_model_agent_person_and_own() -> None:
    profile = profile_run("run-1", three_nodes().events)
    assert (profile.status, profile.workflow, profile.version) == ("succeeded", "triage", 2)
    assert profile.wall_ms == pytest.approx(6710)
    assert profile.queued_ms == pytest.approx(50)
    plan, build, ship = profile.nodes
    assert (plan.node_id, plan.wall_ms, plan.model_ms, plan.own_ms) == ("plan", 600, 500, 100)
    assert plan.llm_calls == 2 and plan.start_ms == pytest.approx(100)
    assert (build.wall_ms, build.agent_ms, build.own_ms) == (5000, 4000, 1000)
    assert (ship.wall_ms, ship.human_ms, ship.own_ms) == (1000, 1000, 0)
    assert build.share == pytest.approx(5000 / 6710)
    assert (profile.model_ms, profile.agent_ms, profile.human_ms) == (500, 4000, 1000)


def test_the_node_over_half_the_run_is_the_bottleneck_and_only_it() -> None:
    profile = profile_run("run-1", three_nodes().events)
    assert profile.bottleneck == "build"
    assert [n.bottleneck for n in profile.nodes] == [False, True, False]
    # With the agent quicker no node holds half of the run: no bottleneck.
    quick = profile_run("run-1", three_nodes(agent_ms=500).events)
    assert quick.bottleneck is None
    assert not any(n.bottleneck for n in quick.nodes)


def test_retries_count_and_their_backoff_is_wall_time_but_not_chiffons_own() -> None:
    timeout = ErrorInfo(type="timeout", message="slow", node_id="plan")
    events = (
        Events()
        .at(0, RunRequested(workflow="triage", version=1, digest="d" * 64))
        .at(0, NodeStarted(node_id="plan", node_type="llm", attempt=1))
        .at(
            1000,
            NodeFailed(node_id="plan", attempt=1, error=timeout, will_retry=True, duration_ms=1000),
        )
        .at(1500, NodeStarted(node_id="plan", node_type="llm", attempt=2))
        .at(1900, llm("plan", 2, 350))
        .at(1900, done("plan", {"text": "ok"}, attempt=2))
        .at(2000, RunCompleted(duration_ms=0))
    )
    profile = profile_run("run-1", events.events)
    (plan,) = profile.nodes
    assert (plan.attempts, plan.retries, plan.status) == (2, 1, "succeeded")
    assert (plan.wall_ms, plan.backoff_ms, plan.model_ms, plan.own_ms) == (1900, 500, 350, 1050)
    assert [(s.attempt, s.status, s.start_ms, s.wall_ms) for s in profile.spans] == [
        (1, "retried", 0, 1000),
        (2, "succeeded", 1500, 400),
    ]


def test_a_running_run_is_profiled_up_to_its_last_event() -> None:
    events = (
        Events()
        .at(0, RunRequested(workflow="triage", version=1, digest="d" * 64))
        .at(100, NodeStarted(node_id="build", node_type="agent", attempt=1))
        .at(300, AgentTaskAssigned(task_id="t1", node_id="build", agent_id="a1", attempt=1))
    )
    profile = profile_run("run-1", events.events)
    assert (profile.status, profile.ended_at, profile.wall_ms) == ("running", None, 300)
    (build,) = profile.nodes
    assert (build.status, build.wall_ms, build.agent_ms) == ("running", 200, 0)


def test_waits_longer_than_the_attempt_are_cut_to_it() -> None:
    """Calls made side by side inside one attempt can sum to more than it lasted."""
    events = (
        Events()
        .at(0, RunRequested(workflow="triage", version=1, digest="d" * 64))
        .at(0, NodeStarted(node_id="fan", node_type="llm", attempt=1))
        .at(100, llm("fan", 1, 90))
        .at(100, llm("fan", 1, 90))
        .at(100, done("fan", {}))
        .at(100, RunCompleted(duration_ms=0))
    )
    (fan,) = profile_run("run-1", events.events).nodes
    assert (fan.wall_ms, fan.model_ms, fan.own_ms) == (100, 100, 0)


def test_no_events_is_an_empty_profile() -> None:
    profile = profile_run("run-1", [])
    assert (profile.wall_ms, profile.nodes, profile.bottleneck) == (0, [], None)


def test_percentiles_interpolate_between_ranks_and_one_value_is_all_three() -> None:
    spread = percentiles([float(v) for v in range(1, 101)])
    assert (spread.p50, spread.p95, spread.p99) == pytest.approx((50.5, 95.05, 99.01))
    assert percentiles([7.0]).model_dump() == {"p50": 7.0, "p95": 7.0, "p99": 7.0}


def test_a_workflow_profile_spreads_each_node_over_the_runs_it_ran_in() -> None:
    runs = [
        profile_run(f"r{i}", three_nodes(f"r{i}", agent_ms=ms).events)
        for i, ms in enumerate((1000, 2000, 3000, 4000, 5000))
    ]
    summary = profile_workflow("triage", 100, runs)
    assert (summary.runs, summary.last) == (5, 100)
    build = next(n for n in summary.nodes if n.node_id == "build")
    assert build.runs == 5
    assert (build.wall_ms.p50, build.agent_ms.p50) == (4000, 3000)
    assert build.wall_ms.p99 == pytest.approx(5960)
    assert [n.node_id for n in summary.nodes] == ["plan", "build", "ship"]
    assert profile_workflow("triage", 10, []).wall_ms is None


def test_compare_lines_nodes_up_with_output_cost_and_latency_differences() -> None:
    a_events = three_nodes("run-a", answer="hello").events
    b_events = three_nodes("run-b", answer="bonjour", agent_ms=2000).events
    a = RunFacts(
        profile_run("run-a", a_events),
        node_outputs(a_events),
        {"plan": NodeCost(Decimal("0.0021"), 0)},
    )
    b = RunFacts(
        profile_run("run-b", b_events),
        node_outputs(b_events),
        {"plan": NodeCost(Decimal("0.0009"), 1)},
    )
    diff = compare_runs(a, b)
    plan, build, ship = diff.nodes
    assert plan.a and plan.b
    assert (plan.a.outputs, plan.b.outputs) == ({"text": "hello"}, {"text": "bonjour"})
    assert not plan.same_outputs and build.same_outputs and ship.same_outputs
    assert (plan.cost_delta_usd, plan.b.unknown_calls) == ("-0.0012", 1)
    assert build.wall_delta_ms == -2000
    assert (diff.a.cost_usd, diff.b.cost_usd, diff.cost_delta_usd) == (
        "0.0021",
        "0.0009",
        "-0.0012",
    )
    assert diff.wall_delta_ms == -2000 and not diff.same_outputs


def test_a_node_that_ran_in_one_run_only_has_no_other_side() -> None:
    a_events = three_nodes("run-a").events
    b_events = three_nodes("run-b").events[:5]  # b stopped inside plan
    diff = compare_runs(
        RunFacts(profile_run("run-a", a_events), node_outputs(a_events), {}),
        RunFacts(profile_run("run-b", b_events), node_outputs(b_events), {}),
    )
    plan, build, ship = diff.nodes
    assert plan.b is not None and plan.b.status == "running" and plan.b.outputs is None
    assert (build.b, build.wall_delta_ms, build.cost_delta_usd) == (None, None, None)
    assert not ship.same_outputs and diff.b.status == "running"


def test_the_waterfall_places_each_attempt_by_its_start_and_length() -> None:
    drawn = waterfall(profile_run("run-1", three_nodes().events))
    plan, build, ship = drawn.rows
    scale = TRACK_WIDTH / 6710
    assert (plan.x, plan.width) == pytest.approx((LABEL_WIDTH + 100 * scale, 600 * scale), abs=0.01)
    assert build.x == pytest.approx(LABEL_WIDTH + 700 * scale, abs=0.01)
    assert (build.y, ship.y, drawn.height) == (ROW_HEIGHT, 2 * ROW_HEIGHT, 3 * ROW_HEIGHT)
    # The waits fill the bar from its left: the model's 500 of plan's 600 ms.
    (model,) = plan.segments
    assert (model.kind, model.x) == ("model", plan.x)
    assert model.width == pytest.approx(plan.width * 500 / 600, abs=0.01)
    assert [s.kind for s in build.segments] == ["agent"]
    assert [s.kind for s in ship.segments] == ["human"]
    assert [r.bottleneck for r in drawn.rows] == [False, True, False]
    assert drawn.hidden == 0


async def test_kept_histories_are_topped_up_with_new_events_and_bounded() -> None:
    store = InMemoryEventStore(CATALOG)
    events = three_nodes("run-1").events
    await store.append(AggregateKey("run", "run-1"), events[:5], ANY)
    histories = RunHistories(max_events=20)
    assert [e.event_id for e in await histories.read(store, "run-1")] == [
        e.event_id for e in events[:5]
    ]
    await store.append(AggregateKey("run", "run-1"), events[5:], ANY)
    again = await histories.read(store, "run-1")
    assert [e.event_id for e in again] == [e.event_id for e in events]
    assert profile_run("run-1", again) == profile_run("run-1", events)
    # A second run pushes the first out: 16 + 16 events are more than 20.
    other = three_nodes("run-2").events
    await store.append(AggregateKey("run", "run-2"), other, ANY)
    assert len(await histories.read(store, "run-2")) == len(other)
    assert len(histories) == 1
    # Pushed out, run-1 is read whole again.
    assert len(await histories.read(store, "run-1")) == len(events)


def test_a_pause_inside_an_attempt_is_not_chiffons_own_time() -> None:
    events = (
        Events()
        .at(0, RunRequested(workflow="triage", version=1, digest="d" * 64))
        .at(0, NodeStarted(node_id="build", node_type="agent", attempt=1))
        .at(100, RunPaused(reason="no_capacity", node_id="build", requires=("gpu",)))
        .at(3100, RunResumed(reason="an agent registered"))
        .at(3200, AgentTaskAssigned(task_id="t1", node_id="build", agent_id="a1", attempt=1))
        .at(3700, AgentTaskFinished(task_id="t1", node_id="build", ok=True))
        .at(3750, done("build", {}))
        .at(3750, RunCompleted(duration_ms=0))
    )
    (build,) = profile_run("run-1", events.events).nodes
    assert (build.wall_ms, build.paused_ms, build.agent_ms, build.own_ms) == (3750, 3000, 500, 250)
    (row,) = waterfall(profile_run("run-1", events.events)).rows
    assert [s.kind for s in row.segments] == ["agent", "paused"]
