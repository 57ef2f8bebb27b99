"""Routing of agent tasks, and the directory's fold of the AGENTS stream (pure)."""

from __future__ import annotations

from typing import Any

from chiffon.events import Actor, new_event
from chiffon.events.agents import (
    AgentCameBack,
    AgentCapacityChanged,
    AgentDeregistered,
    AgentRegistered,
    AgentWentOffline,
)
from chiffon.eventstore import RecordedEvent
from chiffon.executor.agents.directory import AgentDirectory, evolve_agent, read_resources
from chiffon.executor.agents.routing import (
    GIB,
    AgentView,
    LocalView,
    Requirement,
    Weights,
    route,
)

ACTOR = Actor.service("registry", 0)


def agent(agent_id: str, **kw: Any) -> AgentView:
    fields: dict[str, Any] = {
        "name": agent_id,
        "address": f"{agent_id}:50051",
        "capabilities": frozenset({"shell"}),
        "max_concurrency": 4,
    }
    fields.update(kw)
    return AgentView(agent_id=agent_id, **fields)


def recorded(agent_id: str, payload: Any, sequence: int) -> RecordedEvent:
    envelope = new_event(payload, aggregate_id=agent_id, actor=ACTOR)
    return RecordedEvent(
        envelope=envelope,
        stream="T_AGENTS",
        sequence=sequence,
        subject=f"t.agent.{agent_id}.{envelope.type}",
    )


def registered(**kw: Any) -> AgentRegistered:
    fields: dict[str, Any] = {
        "name": "a1",
        "host": "h",
        "address": "h:1",
        "capabilities": ("shell",),
        "max_concurrency": 2,
    }
    fields.update(kw)
    return AgentRegistered(**fields)


# -- routing --------------------------------------------------------------------------


def test_capabilities_must_all_be_held() -> None:
    agents = [agent("a"), agent("b", capabilities=frozenset({"shell", "gpu"}))]
    routing = route(agents, {}, Requirement(capabilities=("shell", "gpu")), Weights())
    assert [c.agent.agent_id for c in routing.candidates] == ["b"]
    assert routing.passed_over == {"a": "lacks capabilities [gpu]"}


def test_labels_must_all_match() -> None:
    agents = [
        agent("a", labels={"zone": "lab", "os": "linux"}),
        agent("b", labels={"zone": "office"}),
        agent("c"),
    ]
    need = Requirement(capabilities=("shell",), labels={"zone": "lab", "os": "linux"})
    routing = route(agents, {}, need, Weights())
    assert [c.agent.agent_id for c in routing.candidates] == ["a"]
    assert routing.passed_over["b"].startswith("label os=linux not matched")
    assert "zone=lab not matched (office)" not in routing.passed_over["b"]  # first key first


def test_resources_gpu_vram_and_cores() -> None:
    agents = [
        agent("small", gpu_vram_bytes=(4 * GIB,), cpu_cores=16),
        agent("big", gpu_vram_bytes=(4 * GIB, 24 * GIB), cpu_cores=8),
        agent("nogpu", cpu_cores=64),
    ]
    routing = route(agents, {}, Requirement(gpu_vram_gb=8), Weights())
    assert [c.agent.agent_id for c in routing.candidates] == ["big"]
    assert "no GPU with 8 GiB VRAM (largest 4.0 GiB)" == routing.passed_over["small"]
    routing = route(agents, {}, Requirement(cpu_cores=12), Weights())
    assert {c.agent.agent_id for c in routing.candidates} == {"small", "nogpu"}
    assert routing.passed_over["big"] == "8 CPU cores, 12 needed"


def test_offline_deregistered_unreachable_and_full_are_passed_over() -> None:
    agents = [
        agent("off", status="offline"),
        agent("gone", status="deregistered"),
        agent("lost"),
        agent("full", max_concurrency=2),
        agent("ok"),
    ]
    local = {"lost": LocalView(unreachable=True), "full": LocalView(running=2)}
    routing = route(agents, local, Requirement(capabilities=("shell",)), Weights())
    assert [c.agent.agent_id for c in routing.candidates] == ["ok"]
    assert routing.passed_over == {
        "off": "offline",
        "gone": "deregistered",
        "lost": "unreachable from this executor",
        "full": "full (2/2 tasks)",
    }
    assert "full: full (2/2 tasks)" in routing.explain()


def test_no_agent_is_explained() -> None:
    routing = route([], {}, Requirement(capabilities=("shell",)), Weights())
    assert routing.best is None
    assert routing.explain() == "no agent is registered"


def test_score_prefers_free_capacity_then_success_then_latency() -> None:
    agents = [agent("busy"), agent("idle")]
    local = {"busy": LocalView(running=3)}
    routing = route(agents, local, Requirement(), Weights())
    assert [c.agent.agent_id for c in routing.candidates] == ["idle", "busy"]
    best = routing.candidates[0]
    assert any(r.startswith("free capacity 1.00") for r in best.reasons)

    local = {
        "busy": LocalView(recent_ok=10, recent_total=10),
        "idle": LocalView(recent_ok=2, recent_total=10),
    }
    routing = route(agents, local, Requirement(), Weights())
    assert routing.candidates[0].agent.agent_id == "busy"

    local = {
        "busy": LocalView(mean_latency_ms=400.0),
        "idle": LocalView(mean_latency_ms=2.0),
    }
    routing = route(agents, local, Requirement(), Weights())
    assert routing.candidates[0].agent.agent_id == "idle"
    # With the latency weight at zero, the tie falls back on the agent id.
    routing = route(agents, local, Requirement(), Weights(latency=0.0))
    assert [c.agent.agent_id for c in routing.candidates] == ["busy", "idle"]


# -- the directory's fold ---------------------------------------------------------------


def test_resources_in_either_shape() -> None:
    assert read_resources({"cpu_cores": 8, "gpus": [{"vram_bytes": 2.0}, {"x": 1}]}) == (
        8.0,
        (2.0,),
    )
    assert read_resources({"cpu": 4, "gpu_vram_bytes": 3.0, "gpu_count": 2}) == (4.0, (3.0, 3.0))
    assert read_resources(None) == (None, ())


def test_evolve_follows_the_agent_through_its_life() -> None:
    view = evolve_agent(None, "a1", "agent.registered", registered(labels={"z": "1"}), 3)
    assert view is not None
    assert view.status == "online" and view.labels == {"z": "1"} and view.version == 3
    assert view.address == "h:1" and view.max_concurrency == 2
    assert evolve_agent(None, "x", "agent.went_offline", AgentWentOffline(reason="ttl"), 4) is None
    view = evolve_agent(view, "a1", "agent.went_offline", AgentWentOffline(reason="ttl"), 5)
    assert view is not None and view.status == "offline"
    view = evolve_agent(view, "a1", "agent.came_back", AgentCameBack(), 6)
    assert view is not None and view.status == "online"
    changed = AgentCapacityChanged(resources={"cpu_cores": 2.0}, max_concurrency=9)
    view = evolve_agent(view, "a1", "agent.capacity_changed", changed, 7)
    assert view is not None and view.max_concurrency == 9 and view.cpu_cores == 2.0
    view = evolve_agent(view, "a1", "agent.deregistered", AgentDeregistered(), 8)
    assert view is not None and view.status == "deregistered"
    # A heartbeat after deregistration does not bring it back; registering again does.
    view = evolve_agent(view, "a1", "agent.came_back", AgentCameBack(), 9)
    assert view is not None and view.status == "deregistered"


def test_the_agent_chosen_id_names_the_view() -> None:
    view = evolve_agent(None, "agg-1", "agent.registered", registered(agent_id="host:1"), 1)
    assert view is not None and view.agent_id == "host:1"


async def test_unreachable_until_it_announces_itself_or_the_hold_passes() -> None:
    now = [100.0]
    directory = AgentDirectory(unreachable_hold=30.0, clock=lambda: now[0])
    directory.apply(recorded("a1", registered(), 1))
    directory.apply(recorded("a2", registered(name="a2", address="h:2"), 2))
    need = Requirement(capabilities=("shell",))
    assert directory.route(need).best is not None

    directory.unreachable("a1")
    assert [c.agent.agent_id for c in directory.route(need).candidates] == ["a2"]
    directory.apply(recorded("a1", AgentCameBack(), 3))
    assert {c.agent.agent_id for c in directory.route(need).candidates} == {"a1", "a2"}

    directory.unreachable("a1")
    now[0] += 29.0
    assert "a1" in directory.route(need).passed_over
    now[0] += 1.0
    assert "a1" not in directory.route(need).passed_over


async def test_running_tasks_fill_an_agent_and_outcomes_count() -> None:
    directory = AgentDirectory()
    directory.apply(recorded("a1", registered(max_concurrency=2), 1))
    need = Requirement(capabilities=("shell",))
    directory.started("a1")
    directory.started("a1")
    assert directory.route(need).passed_over == {"a1": "full (2/2 tasks)"}
    directory.finished("a1", ok=True, latency_ms=4.0)
    view = directory.local_view("a1")
    assert (view.running, view.recent_ok, view.recent_total, view.mean_latency_ms) == (
        1,
        1,
        1,
        4.0,
    )
    assert directory.route(need).best is not None
    change = directory.watch()
    assert not change.is_set()
    directory.finished("a1", ok=False, latency_ms=None)  # capacity freed: a change
    assert change.is_set() and not directory.watch().is_set()
