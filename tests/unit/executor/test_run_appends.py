"""How a run's appends meet other writers, on the in-memory event store: an outside event
is taken in, an append that landed is not made twice, and a run that stays too busy is
handed back (``ConflictRetriesExhausted``) instead of looping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from chiffon.events import CATALOG, Actor, Envelope, new_event
from chiffon.events.runs import CancelRequested, RunClaimed, RunRequested
from chiffon.eventstore import (
    CONFLICT_ATTEMPTS,
    AggregateKey,
    AppendResult,
    ConcurrencyConflict,
    ConflictRetriesExhausted,
    InMemoryEventStore,
)
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelGateway
from chiffon.executor.outputs import OutputStore
from chiffon.workflow import load_spec

USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
KEY = AggregateKey("run", "run-1")
TWO_STEPS = """
name: two-steps
version: 1
nodes:
  - {id: first, type: set, values: {a: "1"}}
  - {id: second, type: set, values: {b: "a + 1"}}
edges:
  - {from: first, to: second}
"""


class Interfering(InMemoryEventStore):
    """The in-memory store, with something happening at the executor's n-th append."""

    def __init__(self) -> None:
        super().__init__(CATALOG)
        self.executor_appends = 0
        self.before: dict[int, Any] = {}  # n -> coroutine function run before the append
        self.lose_ack: set[int] = set()  # n -> the append lands, its answer is lost
        self.always_conflict = False

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: Any = None,
        **kwargs: Any,
    ) -> AppendResult:
        if not all(e.actor == EXECUTOR for e in events):
            return await super().append(key, events, expected_version, **kwargs)
        self.executor_appends += 1
        n = self.executor_appends
        if self.always_conflict:
            raise ConcurrencyConflict("run", key.aggregate_id, expected_version, None)
        if n in self.before:
            await self.before[n]()
        result = await super().append(key, events, expected_version, **kwargs)
        if n in self.lose_ack:
            raise ConcurrencyConflict("run", key.aggregate_id, expected_version, None)
        return result


async def execution(store: Interfering) -> RunExecution:
    spec = load_spec(TWO_STEPS)
    outside = new_event(
        RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs={}),
        aggregate_id=KEY.aggregate_id,
        actor=USER,
    )
    await store.append(KEY, [outside], 0)
    claim = new_event(
        RunClaimed(executor="executor-1", pid=1, work_seq=1),
        aggregate_id=KEY.aggregate_id,
        actor=Actor.service("executor", 2),  # not counted: the claim is not the run's work
    )
    await store.append(KEY, [claim], 1)
    events, _ = await store.read_aggregate(KEY)
    return RunExecution(
        store=store,
        workflow=LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec)),
        run=RunState.from_events(KEY.aggregate_id, [(e.envelope, e.sequence) for e in events]),
        actor=EXECUTOR,
        llm=ModelGateway(offline_mode="always"),
        outputs=OutputStore(store, "test"),
    )


async def stored(store: Interfering) -> list[str]:
    events, _ = await store.read_aggregate(KEY)
    return [e.type for e in events]


async def test_an_outside_cancel_met_by_an_append_is_taken_in() -> None:
    store = Interfering()

    async def user_cancels() -> None:
        cancel = new_event(CancelRequested(reason="stop"), aggregate_id="run-1", actor=USER)
        await store.append(KEY, [cancel])

    store.before[1] = user_cancels  # between the run's load and its first append

    assert await (await execution(store)).execute() == "cancelled"
    assert await stored(store) == [
        "run.requested",
        "run.claimed",
        "run.cancel_requested",
        "run.cancelled",
    ]


async def test_an_append_whose_answer_was_lost_is_not_made_twice() -> None:
    store = Interfering()
    store.lose_ack = {1}  # the first node's events land, but the executor hears a conflict

    assert await (await execution(store)).execute() == "succeeded"
    assert await stored(store) == [
        "run.requested",
        "run.claimed",
        "run.node.started",
        "run.node.completed",
        "run.node.started",
        "run.node.completed",
        "run.completed",
    ]


async def test_a_run_that_always_conflicts_is_handed_back_not_looped_on() -> None:
    store = Interfering()
    store.always_conflict = True

    with pytest.raises(ConflictRetriesExhausted):
        await (await execution(store)).execute()
    assert store.executor_appends == CONFLICT_ATTEMPTS  # a direct try, then the helper's rest
    assert await stored(store) == ["run.requested", "run.claimed"]
