"""`chiffon projections rebuild` as an operator runs it, against the real servers."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.eventstore import JetStreamEventStore
from chiffon.projections import ProjectionRunner
from chiffon.registry.projections import AgentsProjection
from tests.integration.projections.support import position, snapshot, write_history
from tests.support.cli import run_cli


async def projected(
    store: JetStreamEventStore, engine: AsyncEngine, count: int
) -> tuple[int, list[dict[str, Any]]]:
    """Write ``count`` agent events and project them: the last position and the rows."""
    last = await write_history(store, count)
    await ProjectionRunner(store, engine, AgentsProjection()).catch_up()
    return last, await snapshot(engine)


async def test_a_rebuild_by_worker_processes_reports_every_event_it_replayed(
    store: JetStreamEventStore, engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    last, live = await projected(store, engine, 3000)

    code, out, err = await run_cli(
        service_env, "projections", "rebuild", "registry.agents", "--workers", "2", timeout=120
    )
    assert code == 0, err
    # stdout holds the summary alone (the rebuild's log lines go to stderr).
    assert out.startswith(f"rebuilt registry.agents: {last} events in "), out
    assert out.rstrip().endswith(f"position {last}"), out
    assert out.count("\n") == 1, out
    assert "projection.rebuilt_in_parallel" in err
    assert await snapshot(engine) == live
    assert await position(engine) == last


async def test_a_worker_count_out_of_range_is_refused_before_anything_is_touched(
    store: JetStreamEventStore, engine: AsyncEngine, service_env: dict[str, str]
) -> None:
    last, live = await projected(store, engine, 500)

    code, out, err = await run_cli(
        service_env, "projections", "rebuild", "registry.agents", "--workers", "0"
    )
    assert code == 2
    assert "Invalid value for '--workers'" in err
    assert out == ""
    assert await snapshot(engine) == live
    assert await position(engine) == last
