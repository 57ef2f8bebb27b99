"""The agent aggregate: its fold and every decision on it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from chiffon.events import Actor, EventPayload, new_event
from chiffon.events.agents import (
    AgentCameBack,
    AgentCapacityChanged,
    AgentDeregistered,
    AgentRegistered,
    AgentWentOffline,
)
from chiffon.eventstore import RecordedEvent
from chiffon.registry.domain import (
    AgentDeregisteredAlready,
    AgentNotFound,
    AgentState,
    DeregisterAgent,
    MarkBack,
    MarkOffline,
    RegisterAgent,
    ReportCapacity,
    decide_came_back,
    decide_capacity_changed,
    decide_deregister,
    decide_register,
    decide_went_offline,
    evolve,
)

REGISTRY = Actor.service("registry")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
REGISTER = RegisterAgent(
    agent_id="gpu-box",
    name="gpu-box",
    host="desk.lan",
    address="desk.lan:7070",
    capabilities=("shell", "gpu"),
    resources={"cpu": 16.0, "memory_gb": 64.0},
    max_concurrency=4,
)


def fold(*payloads: EventPayload) -> AgentState:
    """The agent after ``payloads``, stored at sequences 1, 2, … a minute apart."""
    state = AgentState("gpu-box")
    for sequence, payload in enumerate(payloads, start=1):
        at = T0 + timedelta(minutes=sequence - 1)
        envelope = new_event(payload, aggregate_id="gpu-box", actor=REGISTRY, occurred_at=at)
        state = evolve(state, RecordedEvent(envelope, "AGENTS", sequence, ""))
    return state


def registered() -> AgentRegistered:
    (event,) = decide_register(AgentState("gpu-box"), REGISTER, T0)
    return event


# -- the fold ------------------------------------------------------------------------


def test_a_registered_agent_is_online_with_what_it_offers() -> None:
    state = fold(registered())
    assert (state.status, state.available, state.version) == ("online", True, 1)
    assert (state.name, state.host, state.address) == ("gpu-box", "desk.lan", "desk.lan:7070")
    assert state.capabilities == ("shell", "gpu")
    assert dict(state.resources) == {"cpu": 16.0, "memory_gb": 64.0}
    assert (state.max_concurrency, state.registered_at) == (4, T0)


def test_the_state_cannot_be_changed_in_place() -> None:
    state = fold(registered())
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.status = "offline"  # type: ignore[misc]
    with pytest.raises(TypeError):
        state.resources["cpu"] = 1.0  # type: ignore[index]


def test_offline_back_and_deregistered_transitions() -> None:
    offline = fold(registered(), AgentWentOffline(reason="no heartbeat for 60s"))
    assert (offline.status, offline.status_reason, offline.available) == (
        "offline",
        "no heartbeat for 60s",
        False,
    )
    back = fold(registered(), AgentWentOffline(reason="x"), AgentCameBack())
    assert (back.status, back.status_reason) == ("online", None)
    gone = fold(registered(), AgentDeregistered(reason="decommissioned"))
    assert (gone.status, gone.status_reason, gone.known) == ("deregistered", "decommissioned", True)


def test_a_capacity_change_replaces_resources_and_concurrency() -> None:
    state = fold(registered(), AgentCapacityChanged(resources={"cpu": 8.0}, max_concurrency=2))
    assert (dict(state.resources), state.max_concurrency, state.status) == (
        {"cpu": 8.0},
        2,
        "online",
    )


def test_registering_again_keeps_the_first_registration_time() -> None:
    state = fold(registered(), AgentDeregistered(), registered())
    assert (state.status, state.registered_at, state.version) == ("online", T0, 3)


def test_events_of_an_agent_never_registered_only_move_the_version() -> None:
    state = fold(AgentWentOffline(reason="x"), AgentCameBack())
    assert (state.status, state.known, state.version) == ("unregistered", False, 2)


# -- decisions -------------------------------------------------------------------------


def test_the_same_registration_of_an_online_agent_changes_nothing() -> None:
    assert decide_register(fold(registered()), REGISTER, T0) == []


def test_a_registration_with_other_details_or_after_going_offline_is_recorded() -> None:
    moved = dataclasses.replace(REGISTER, address="desk.lan:7071")
    (event,) = decide_register(fold(registered()), moved, T0)
    assert event.address == "desk.lan:7071"
    offline = fold(registered(), AgentWentOffline(reason="x"))
    assert len(decide_register(offline, REGISTER, T0)) == 1


def test_deregistering_is_recorded_once() -> None:
    command = DeregisterAgent("gpu-box", reason="retired")
    assert decide_deregister(fold(registered()), command, T0) == [
        AgentDeregistered(reason="retired")
    ]
    with pytest.raises(AgentDeregisteredAlready):
        decide_deregister(fold(registered(), AgentDeregistered()), command, T0)
    with pytest.raises(AgentNotFound, match="no agent 'gpu-box' is registered"):
        decide_deregister(AgentState("gpu-box"), command, T0)


def test_only_an_online_agent_goes_offline() -> None:
    lapse = MarkOffline("gpu-box", reason="no heartbeat for 60s")
    assert decide_went_offline(fold(registered()), lapse, T0) == [
        AgentWentOffline(reason="no heartbeat for 60s")
    ]
    offline = fold(registered(), AgentWentOffline(reason="x"))
    assert decide_went_offline(offline, lapse, T0) == []
    assert decide_went_offline(fold(registered(), AgentDeregistered()), lapse, T0) == []
    with pytest.raises(AgentNotFound):
        decide_went_offline(AgentState("gpu-box"), lapse, T0)


def test_only_an_offline_agent_comes_back() -> None:
    offline = fold(registered(), AgentWentOffline(reason="x"))
    assert decide_came_back(offline, MarkBack("gpu-box"), T0) == [AgentCameBack()]
    assert decide_came_back(fold(registered()), MarkBack("gpu-box"), T0) == []
    with pytest.raises(AgentDeregisteredAlready):
        decide_came_back(fold(registered(), AgentDeregistered()), MarkBack("gpu-box"), T0)
    with pytest.raises(AgentNotFound):
        decide_came_back(AgentState("gpu-box"), MarkBack("gpu-box"), T0)


@pytest.mark.parametrize(
    ("resources", "max_concurrency", "recorded"),
    [
        ({"cpu": 16.0, "memory_gb": 64.0}, 4, False),  # the same
        ({"cpu": 15.0, "memory_gb": 62.0}, 4, False),  # heartbeat noise
        ({"cpu": 8.0, "memory_gb": 64.0}, 4, True),  # half the CPUs
        ({"cpu": 16.0, "memory_gb": 64.0}, 2, True),  # less concurrency
        ({"cpu": 16.0, "memory_gb": 64.0, "gpu": 1.0}, 4, True),  # a new resource
        ({"cpu": 16.0}, 4, True),  # a resource gone
    ],
)
def test_only_a_significant_capacity_change_is_an_event(
    resources: dict[str, float], max_concurrency: int, recorded: bool
) -> None:
    command = ReportCapacity("gpu-box", resources=resources, max_concurrency=max_concurrency)
    events = decide_capacity_changed(fold(registered()), command, T0)
    expected = [AgentCapacityChanged(resources=resources, max_concurrency=max_concurrency)]
    assert events == (expected if recorded else [])


def test_small_resources_need_a_change_of_a_tenth_of_one() -> None:
    state = fold(registered(), AgentCapacityChanged(resources={"gpu_util": 0.0}, max_concurrency=4))
    noise = ReportCapacity("gpu-box", resources={"gpu_util": 0.05}, max_concurrency=4)
    busy = ReportCapacity("gpu-box", resources={"gpu_util": 0.9}, max_concurrency=4)
    assert decide_capacity_changed(state, noise, T0) == []
    assert len(decide_capacity_changed(state, busy, T0)) == 1


def test_capacity_of_an_unknown_or_deregistered_agent_is_refused() -> None:
    command = ReportCapacity("gpu-box", resources={}, max_concurrency=1)
    with pytest.raises(AgentNotFound):
        decide_capacity_changed(AgentState("gpu-box"), command, T0)
    with pytest.raises(AgentDeregisteredAlready):
        decide_capacity_changed(fold(registered(), AgentDeregistered()), command, T0)


def test_a_new_instance_is_a_restart_the_same_one_or_none_is_not() -> None:
    first = dataclasses.replace(REGISTER, instance="p1")
    (event,) = decide_register(AgentState("gpu-box"), first, T0)
    assert event.instance == "p1"
    state = fold(event)
    assert state.instance == "p1"
    assert decide_register(state, first, T0) == []  # the same process again
    assert decide_register(state, REGISTER, T0) == []  # a client that sends no instance
    (restart,) = decide_register(state, dataclasses.replace(REGISTER, instance="p2"), T0)
    assert restart.instance == "p2"
    assert restart.model_dump(exclude={"instance"}) == event.model_dump(exclude={"instance"})
    # An event from before issue 17's instance decodes without one.
    assert AgentRegistered.model_validate(event.model_dump(exclude={"instance"})).instance is None
