"""Waiting on runs the way a user would: by following their events, with deadlines."""

from __future__ import annotations

import asyncio
from typing import Any

from chiffon.cli.client import ChiffonClient, RunEvent
from chiffon.events.runs import RUN_ENDINGS
from chiffon.readmodels.views import RunPublic
from tests.support.fixtures import eventually

ENDINGS = RUN_ENDINGS


async def events_until(
    client: ChiffonClient, run_id: str, stop: Any = None, *, timeout: float = 30.0
) -> list[RunEvent]:
    """The run's events up to the first one where ``stop(event)`` is true (default: its end)."""
    stop = stop or (lambda e: e.type in ENDINGS)
    seen: list[RunEvent] = []

    async def collect() -> None:
        async for event in client.follow_run_events(run_id):
            seen.append(event)
            if stop(event):
                return

    try:
        await asyncio.wait_for(collect(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"run {run_id} did not get there in {timeout}s; saw {[e.type for e in seen]}"
        ) from None
    return seen


async def run_view(
    client: ChiffonClient, run_id: str, status: str, timeout: float = 15.0
) -> RunPublic:
    """The read model of the run once its projection shows ``status``."""

    async def probe() -> RunPublic | None:
        run = await client.get_run(run_id)
        return run if run is not None and run.status == status else None

    return await eventually(
        probe, timeout=timeout, message=f"run {run_id} {status} in the read model"
    )


def of_type(events: list[RunEvent], event_type: str) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.type == event_type]
