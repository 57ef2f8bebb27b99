"""Verifying many recorded runs: read ahead from the store, replay one at a time, and
spread the runs over processes.

A bare LangGraph node costs about 0.3 ms here, so one process replays at most about
3,000 nodes/s whatever else is saved: many runs go to one process per core, each with
its own connection to the store.
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
from chiffon.executor.replay.source import RunNotFound, RunSource

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


async def _read(source: RunSource, run_id: str) -> RecordedRun | RunResult:
    try:
        return await source.run(run_id)
    except RunNotFound:
        return RunResult(run_id, None, f"run {run_id} has no events")
    except RecordError as error:
        return RunResult(run_id, None, str(error))


async def verify_runs(store: EventStore, run_ids: Sequence[str]) -> AsyncIterator[RunResult]:
    """Each run's result, in order (``EventStoreUnavailable`` stops the batch)."""
    source = RunSource(store)
    async for result in _verify(source, run_ids, Counters()):
        yield result


async def _verify(
    source: RunSource, run_ids: Sequence[str], counters: Counters
) -> AsyncIterator[RunResult]:
    for start in range(0, len(run_ids), READ_AHEAD):
        chunk = run_ids[start : start + READ_AHEAD]
        records = await asyncio.gather(*(_read(source, run_id) for run_id in chunk))
        for record in records:
            if isinstance(record, RunResult):
                yield record
                continue
            try:
                workflow = await source.workflow(record)
            except RecordError as error:
                yield RunResult(record.run_id, None, str(error))
                continue
            try:
                verdict = await verify_run(record, workflow, counters)
            except EventStoreUnavailable:
                raise
            except Exception as error:  # noqa: BLE001 — one run's record must not stop the rest
                log.warning("replay.failed", run_id=record.run_id, error=repr(error))
                yield RunResult(
                    record.run_id, None, f"the replay failed: {type(error).__name__}: {error}"
                )
                continue
            yield RunResult(record.run_id, verdict)


async def _verify_chunk(url: str, namespace: str, run_ids: list[str]) -> Totals:
    from chiffon.eventstore import JetStreamEventStore

    totals = Totals()
    started, began = time.process_time(), time.perf_counter()
    async with JetStreamEventStore.connect(
        url, CATALOG, namespace=namespace, name="chiffon-replay"
    ) as store:
        source = RunSource(store)
        async for result in _verify(source, run_ids, totals.counters):
            totals.results.append(result)
    totals.cpu_seconds = time.process_time() - started
    totals.wall_seconds = time.perf_counter() - began
    return totals


def _worker(url: str, namespace: str, run_ids: list[str]) -> Totals:
    from chiffon.core.runtime import tune_gc

    tune_gc()
    return asyncio.run(_verify_chunk(url, namespace, run_ids))


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def verify_in_processes(url: str, namespace: str, run_ids: list[str], processes: int) -> Totals:
    """Every run verified, ``processes`` at a time, each process a contiguous share.
    One process: in this one. Raises ``EventStoreUnavailable`` when the store is away."""
    if processes <= 1 or len(run_ids) < 2:
        return _worker(url, namespace, run_ids)
    processes = min(processes, len(run_ids))
    size = -(-len(run_ids) // processes)
    shares = [run_ids[i : i + size] for i in range(0, len(run_ids), size)]
    totals = Totals()
    # Spawned, not forked: the parent may hold gRPC and NATS state a fork would copy.
    with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, url, namespace, share) for share in shares]
        for future in futures:
            totals.add(future.result())
    return totals
