"""What profiles and comparisons read: a run's events from the event store, a
workflow's last finished runs from the runs read model, a run's spend per node from the
cost service's ``cost_calls``. Failures become problems here, once."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.events import Envelope
from chiffon.events.runs import TERMINAL_STATUSES
from chiffon.eventstore import AggregateKey, EventStore
from chiffon.gateway.comparison import NodeCost
from chiffon.gateway.costs import cost_calls
from chiffon.gateway.problems import NotFound, Unavailable
from chiffon.gateway.runtime import Gateway
from chiffon.readmodels.tables import runs

LAST_MAX = 1000
"""Most runs one workflow profile reads. Each run is one direct read of its events from
NATS. Measured over 1,000 runs of three LLM nodes (10 events each) in a 10,000-event
stream: per run, 3.4 ms of NATS's CPU (the subject lookup) and 2.1 ms of the gateway's
(decoding the events; the profile itself, 0.25 ms), so about 5.7 s of CPU in all for
the largest profile (medians of 5, machine load 10 on 2 cores)."""

READS_IN_FLIGHT = 16
"""Runs read at once for a workflow profile: enough to hide NATS's round trips, few
enough that one profile does not starve the other requests of this replica."""

WORKFLOW_PROFILE_SECONDS = 60.0
"""How long reading a workflow profile's runs may take before the answer is a 503: the
read model's 5 s query timeout fits one run, not 1,000 on a busy machine (10 to 15 s
at load 10 on 2 cores)."""


class RunHistories:
    """Runs' events kept in this process (LRU, bounded by the events held), topped up
    from the event store with only what was appended since: a run's page refreshes its
    waterfall on each of the run's events, and reading the whole run each time cost
    0.2 ms of CPU per event already seen (a loop of 1,000 events: 200 ms per refresh).
    Events are never changed once stored, so what is kept stays true."""

    def __init__(self, max_events: int = 100_000) -> None:
        self.max_events = max_events
        self._held = 0
        self._runs: OrderedDict[tuple[str, str], tuple[int, list[Envelope[Any]]]] = OrderedDict()

    def __len__(self) -> int:
        """Runs kept."""
        return len(self._runs)

    async def read(self, store: EventStore, run_id: str) -> list[Envelope[Any]]:
        key = (store.streams.namespace, run_id)
        version, events = self._runs.get(key, (0, []))
        recorded, version = await store.read_aggregate(AggregateKey("run", run_id), after=version)
        events = events + [event.envelope for event in recorded]
        held = self._runs.pop(key, None)  # (another request may have replaced it meanwhile)
        if held is not None:
            self._held -= len(held[1])
        if len(events) <= self.max_events:
            self._runs[key] = (version, events)
            self._held += len(events)
        while self._held > self.max_events:
            _, (_, dropped) = self._runs.popitem(last=False)
            self._held -= len(dropped)
        return events


HISTORIES = RunHistories()


async def run_events(gw: Gateway, run_id: str) -> list[Envelope[Any]]:
    """The run's events in stream order; 404 when the store holds none."""
    try:
        events = await HISTORIES.read(gw.store, run_id)
    except Exception as error:  # noqa: BLE001 — NATS trouble is a 503, not a 500
        raise Unavailable(
            f"the event store did not answer: {type(error).__name__}", retry_after=1
        ) from None
    if not events:
        raise NotFound(f"no run {run_id!r}")
    return events


async def _read_once(gw: Gateway, run_id: str) -> list[Envelope[Any]]:
    """The run's events, not kept: a workflow profile reads hundreds of ended runs once."""
    try:
        recorded, _ = await gw.store.read_aggregate(AggregateKey("run", run_id))
    except Exception as error:  # noqa: BLE001 — NATS trouble is a 503, not a 500
        raise Unavailable(
            f"the event store did not answer: {type(error).__name__}", retry_after=1
        ) from None
    return [event.envelope for event in recorded]


async def many_run_events(gw: Gateway, run_ids: Sequence[str]) -> list[list[Envelope[Any]]]:
    """Each run's events (in ``run_ids``' order), a bounded number read at once."""
    gate = asyncio.Semaphore(READS_IN_FLIGHT)

    async def one(run_id: str) -> list[Envelope[Any]]:
        async with gate:
            return await _read_once(gw, run_id)

    try:
        async with asyncio.timeout(WORKFLOW_PROFILE_SECONDS):
            return list(await asyncio.gather(*(one(run_id) for run_id in run_ids)))
    except TimeoutError:
        raise Unavailable(
            f"reading {len(run_ids)} runs took over {WORKFLOW_PROFILE_SECONDS:g} s; "
            "ask for fewer (last)",
            retry_after=5,
        ) from None


async def last_finished_runs(engine: AsyncEngine, workflow: str, last: int) -> list[str]:
    """The ids of the workflow's ``last`` most recently requested runs that ended."""
    query = (
        select(runs.c.run_id)
        .where(runs.c.workflow == workflow, runs.c.status.in_(sorted(TERMINAL_STATUSES)))
        .order_by(runs.c.seq.desc())
        .limit(last)
    )
    async with engine.connect() as conn:
        return [run_id for (run_id,) in await conn.execute(query)]


async def node_costs(engine: AsyncEngine, run_id: str) -> dict[str, NodeCost]:
    """The run's known spend per node, and its calls without a known price (nothing
    when the cost service has not priced the run, or has no tables yet)."""
    query = (
        select(
            cost_calls.c.node_id,
            func.coalesce(func.sum(cost_calls.c.cost_usd), 0),
            func.count().filter(cost_calls.c.cost_usd.is_(None)),
        )
        .where(cost_calls.c.run_id == run_id)
        .group_by(cost_calls.c.node_id)
    )
    try:
        async with engine.connect() as conn:
            rows = list(await conn.execute(query))
    except ProgrammingError as error:
        if "cost_calls" in str(error) and "does not exist" in str(error):
            return {}
        raise
    return {node_id: NodeCost(Decimal(cost), int(unknown)) for node_id, cost, unknown in rows}
