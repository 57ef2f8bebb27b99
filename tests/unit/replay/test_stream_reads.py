"""Many runs are read for a replay in one pass over the RUNS stream (``RunSource.runs``):
each run asked for gets exactly its own events, in stream order, however the runs'
events interleave; runs not asked for are skipped; a run with no events, or whose
stream lost its request, is said, not raised; more runs than one pass holds take
several passes; and ``last_runs`` names where each run's events start."""

from __future__ import annotations

import pytest

from chiffon.events import CATALOG, Actor, new_event, uuid7
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.replay import source as source_module
from chiffon.executor.replay.recorded import RecordedRun, RecordError
from chiffon.executor.replay.source import RunNotFound, RunRef, RunSource, last_runs

USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)


async def request(store: InMemoryEventStore, run_id: str, workflow: str) -> int:
    payload = RunRequested(workflow=workflow, version=1, digest="d" * 64, inputs={})
    stored = await store.append(
        AggregateKey("run", run_id), [new_event(payload, aggregate_id=run_id, actor=USER)]
    )
    return stored.sequences[0]


async def claim(store: InMemoryEventStore, run_id: str, work_seq: int) -> None:
    payload = RunClaimed(executor="executor-1", pid=1, work_seq=work_seq)
    await store.append(
        AggregateKey("run", run_id),
        [new_event(payload, aggregate_id=run_id, actor=EXECUTOR, causation_id=str(uuid7()))],
    )


@pytest.mark.parametrize("runs_per_pass", [2_000, 2])
async def test_each_run_gets_its_own_events_from_one_pass(
    monkeypatch: pytest.MonkeyPatch, runs_per_pass: int
) -> None:
    monkeypatch.setattr(source_module, "RUNS_PER_PASS", runs_per_pass)
    store = InMemoryEventStore(CATALOG)
    await request(store, "before", "brief")  # before every run asked for: never read
    starts = {run_id: await request(store, run_id, "brief") for run_id in ("r1", "r2", "r3")}
    # The runs' claims interleave, and one run not asked for is among them.
    await request(store, "other", "digest")
    for work_seq, run_id in enumerate(("r2", "other", "r1", "r2", "r3", "r1"), start=1):
        await claim(store, run_id, work_seq)
    # A run whose request was lost: its stream holds a claim only.
    await claim(store, "headless", 9)
    headless_at = (await store.read_aggregate(AggregateKey("run", "headless")))[1]
    asked = [
        RunRef("r3", starts["r3"]),
        RunRef("r1", starts["r1"]),
        RunRef("ghost", starts["r1"]),
        RunRef("headless", headless_at),
        RunRef("r2", starts["r2"]),
    ]
    read = [(run_id, record) async for run_id, record in RunSource(store).runs(asked)]
    assert [run_id for run_id, _ in read] == ["r3", "r1", "ghost", "headless", "r2"]
    by_id = dict(read)
    for run_id, claims in (("r1", [3, 6]), ("r2", [1, 4]), ("r3", [5])):
        record = by_id[run_id]
        assert isinstance(record, RecordedRun) and record.run_id == run_id
        expected, _ = await store.read_aggregate(AggregateKey("run", run_id))
        assert [s for _, s in record.events] == [e.sequence for e in expected]
        assert [e.payload.work_seq for e, _ in record.events[1:]] == claims
    assert isinstance(by_id["ghost"], RunNotFound)
    headless = by_id["headless"]
    assert isinstance(headless, RecordError) and "not run.requested" in str(headless)


async def test_the_last_runs_of_a_workflow_say_where_their_events_start() -> None:
    store = InMemoryEventStore(CATALOG)
    at = {run_id: await request(store, run_id, "brief") for run_id in ("r1", "r2", "r3")}
    await request(store, "other", "digest")
    assert await last_runs(store, "brief", 2) == [RunRef("r2", at["r2"]), RunRef("r3", at["r3"])]
    assert await last_runs(store, "nothing", 5) == []
