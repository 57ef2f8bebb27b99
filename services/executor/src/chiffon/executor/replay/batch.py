"""Verifying many recorded runs: read them from the store in one pass, replay one at a
time, and spread the runs over processes.

Replaying is CPU-bound (well under a millisecond per node, see ``bench/replay.py``):
many runs go to one process per core, each with its own connection to the store and
its own pass over the stream.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

from chiffon.core.logging import get_logger
from chiffon.events import CATALOG
from chiffon.eventstore import EventStore, EventStoreUnavailable
from chiffon.executor.replay.driver import Counters, Verdict, verify_run
from chiffon.executor.replay.recorded import RecordedRun, RecordError
from chiffon.executor.replay.source import RunNotFound, RunRef, RunSource

log = get_logger(__name__)
READ_AHEAD = 32  # runs read concurrently while the previous ones replay


@dataclass(frozen=True)
class RunResult:
    """One run's verdict, or why it could not be replayed."""

    run_id: str
    verdict: Verdict | None
    error: str | None = None


@dataclass
class Totals:
    """What a batch did: its results, and the CPU it took (replay and reads)."""

    results: list[RunResult] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)
    cpu_seconds: float = 0.0
    # The longest process's time from its connection to its last run (process start-up
    # left out: spawning a process that imports the engine takes about a second).
    wall_seconds: float = 0.0

    @property
    def nodes(self) -> int:
        return sum(r.verdict.nodes for r in self.results if r.verdict is not None)

    def add(self, other: Totals) -> None:
        self.results.extend(other.results)
        self.counters.model_calls += other.counters.model_calls
        self.counters.agent_tasks += other.counters.agent_tasks
        self.cpu_seconds += other.cpu_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)


async def _read_one_by_one(
    source: RunSource, run_ids: Sequence[str]
) -> AsyncIterator[tuple[str, RecordedRun | RunNotFound | RecordError]]:
    for start in range(0, len(run_ids), READ_AHEAD):
        chunk = run_ids[start : start + READ_AHEAD]
        for run_id, record in zip(
            chunk, await asyncio.gather(*(_read(source, run_id) for run_id in chunk)), strict=True
        ):
            yield run_id, record


async def _read(source: RunSource, run_id: str) -> RecordedRun | RunNotFound | RecordError:
    try:
        return await source.run(run_id)
    except (RunNotFound, RecordError) as error:
        return error


async def verify_runs(
    store: EventStore, run_ids: Sequence[str], *, through_langgraph: bool = False
) -> AsyncIterator[RunResult]:
    """Each run's result, in order, each run read by itself (``EventStoreUnavailable``
    stops the batch). For many runs, ``verify_stored`` reads the stream once."""
    source = RunSource(store)
    records = _read_one_by_one(source, run_ids)
    async for result in _verify(source, records, Counters(), through_langgraph):
        yield result


async def verify_stored(
    store: EventStore,
    runs: Sequence[RunRef],
    counters: Counters,
    *,
    through_langgraph: bool = False,
) -> AsyncIterator[RunResult]:
    """Each run's result, in order, the runs read in one pass over the stream."""
    source = RunSource(store)
    async for result in _verify(source, source.runs(runs), counters, through_langgraph):
        yield result


async def _verify(
    source: RunSource,
    records: AsyncIterator[tuple[str, RecordedRun | RunNotFound | RecordError]],
    counters: Counters,
    through_langgraph: bool,
) -> AsyncIterator[RunResult]:
    # The first run of each workflow version goes through LangGraph's own loop, the rest
    # are stepped (``steps.DirectGraph``): every check thus also runs the scheduling the
    # executor really uses on each version's graph, so a LangGraph upgrade that orders
    # nodes differently is caught by the check made before it, at the cost of one slower
    # run per version.
    through_loop: set[str] = set()
    async for run_id, record in records:
        if isinstance(record, RunNotFound):
            yield RunResult(run_id, None, f"run {run_id} has no events")
            continue
        if isinstance(record, RecordError):
            yield RunResult(run_id, None, str(record))
            continue
        try:
            workflow = await source.workflow(record)
        except RecordError as error:
            yield RunResult(run_id, None, str(error))
            continue
        first_of_version = workflow.digest not in through_loop
        through_loop.add(workflow.digest)
        try:
            verdict = await verify_run(
                record, workflow, counters, through_langgraph=through_langgraph or first_of_version
            )
        except EventStoreUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 — one run's record must not stop the rest
            log.warning("replay.failed", run_id=run_id, error=repr(error))
            yield RunResult(run_id, None, f"the replay failed: {type(error).__name__}: {error}")
            continue
        yield RunResult(run_id, verdict)


async def _verify_chunk(
    url: str, namespace: str, runs: list[RunRef], through_langgraph: bool
) -> Totals:
    from chiffon.eventstore import JetStreamEventStore

    totals = Totals()
    started, began = time.process_time(), time.perf_counter()
    async with JetStreamEventStore.connect(
        url, CATALOG, namespace=namespace, name="chiffon-replay"
    ) as store:
        verified = verify_stored(store, runs, totals.counters, through_langgraph=through_langgraph)
        async for result in verified:
            totals.results.append(result)
    totals.cpu_seconds = time.process_time() - started
    totals.wall_seconds = time.perf_counter() - began
    return totals


def _worker(url: str, namespace: str, runs: list[RunRef], through_langgraph: bool) -> Totals:
    from chiffon.core.runtime import tune_gc

    tune_gc()
    return asyncio.run(_verify_chunk(url, namespace, runs, through_langgraph))


RUNS_PER_PROCESS = 400
"""Runs worth a process of their own: a spawned process takes 1-3 s of CPU to import
the engine, about what verifying a few hundred runs costs."""


def default_processes(runs: int) -> int:
    """One process per core (at most 8), but none for fewer runs than it is worth."""
    return max(1, min(os.cpu_count() or 1, 8, runs // RUNS_PER_PROCESS))


def verify_in_processes(
    url: str,
    namespace: str,
    runs: list[RunRef],
    processes: int,
    *,
    through_langgraph: bool = False,
) -> Totals:
    """Every run verified, ``processes`` at a time, each process a contiguous share (in
    the order given: oldest first, each process's pass over the stream starts at its own
    first run). One process: in this one. Raises ``EventStoreUnavailable`` when the store
    is away."""
    if processes <= 1 or len(runs) < 2:
        return _worker(url, namespace, runs, through_langgraph)
    processes = min(processes, len(runs))
    size = -(-len(runs) // processes)
    shares = [runs[i : i + size] for i in range(0, len(runs), size)]
    totals = Totals()
    # Spawned, not forked: the parent may hold gRPC and NATS state a fork would copy.
    with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_worker, url, namespace, share, through_langgraph) for share in shares
        ]
        for future in futures:
            totals.add(future.result())
    return totals
