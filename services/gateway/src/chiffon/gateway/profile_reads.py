"""What profiles and comparisons read: a run's events from the event store, a
workflow's last finished runs from the runs read model, a run's spend per node from the
cost service's ``cost_calls``. Failures become problems here, once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.events import Envelope
from chiffon.events.runs import TERMINAL_STATUSES
from chiffon.eventstore import AggregateKey
from chiffon.gateway.comparison import NodeCost
from chiffon.gateway.costs import cost_calls
from chiffon.gateway.problems import NotFound, Unavailable
from chiffon.gateway.runtime import Gateway
from chiffon.readmodels.tables import runs

LAST_MAX = 1000
"""Most runs one workflow profile reads. Each is one direct read of its events from
NATS; 1,000 runs of three nodes took 1.3 s of the gateway's time on 2 busy cores."""

READS_IN_FLIGHT = 16
"""Runs read at once for a workflow profile: enough to hide NATS's round trips, few
enough that one profile does not starve the other requests of this replica."""


async def run_events(gw: Gateway, run_id: str) -> list[Envelope[Any]]:
    """The run's events in stream order; 404 when the store holds none."""
    try:
        recorded, _ = await gw.store.read_aggregate(AggregateKey("run", run_id))
    except Exception as error:  # noqa: BLE001 — NATS trouble is a 503, not a 500
        raise Unavailable(
            f"the event store did not answer: {type(error).__name__}", retry_after=1
        ) from None
    if not recorded:
        raise NotFound(f"no run {run_id!r}")
    return [event.envelope for event in recorded]


async def many_run_events(gw: Gateway, run_ids: Sequence[str]) -> list[list[Envelope[Any]]]:
    """Each run's events (in ``run_ids``' order), a bounded number read at once."""
    gate = asyncio.Semaphore(READS_IN_FLIGHT)

    async def one(run_id: str) -> list[Envelope[Any]]:
        async with gate:
            return await run_events(gw, run_id)

    return list(await asyncio.gather(*(one(run_id) for run_id in run_ids)))


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
