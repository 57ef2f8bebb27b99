"""The audit index, projected from real run events into PostgreSQL, and the search and
failures queries the API serves from it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.audit.index import AuditIndexProjection
from chiffon.audit.search import AuditFilter, InvalidCursor, failures, search_events
from chiffon.events import CATALOG
from chiffon.events.runs import ErrorInfo, NodeFailed
from chiffon.eventstore import AggregateKey
from chiffon.eventstore.memory import InMemoryEventStore
from chiffon.projections import ProjectionRunner
from tests.unit.audit.sample import EXECUTOR, T0, _at, run_events

# run id -> how it ends, on which workflow and agent, starting when (seconds after T0)
RUNS: dict[str, dict[str, Any]] = {
    "ok-1": {},
    "late-timeout": {
        "fail_with": "timeout",
        "workflow": "deploy-kuma",
        "agent_id": "agent-x",
        "start": 3000,
    },
    "early-timeout": {
        "fail_with": "timeout",
        "workflow": "deploy-kuma",
        "agent_id": "agent-x",
        "start": 1000,
    },
    "exit": {
        "fail_with": "exit_nonzero",
        "workflow": "backup",
        "agent_id": "agent-y",
        "start": 2000,
    },
}


@pytest.fixture(scope="module")
async def indexed(audit_engine: AsyncEngine) -> AsyncIterator[tuple[AsyncEngine, int]]:
    store = InMemoryEventStore(CATALOG)
    total = 0
    for run_id, how in RUNS.items():
        events = run_events(run_id, **how)
        if run_id == "ok-1":
            # A failure text no PostgreSQL column can hold as is: a NUL (legal in JSON).
            error = ErrorInfo(type="provider_error", message="bad\x00byte here")
            events.insert(
                4,
                _at(
                    NodeFailed(
                        node_id="plan", attempt=1, error=error, will_retry=True, duration_ms=1
                    ),
                    run_id,
                    EXECUTOR,
                    1.15,
                ),
            )
        await store.append(AggregateKey("run", run_id), events)
        total += len(events)
    # Small batches: a run's later events find its workflow and agent in earlier batches.
    runner = ProjectionRunner(store, audit_engine, AuditIndexProjection(), batch_size=7)
    assert await runner.catch_up() == total
    yield audit_engine, total


async def _all(engine: AsyncEngine, found: AuditFilter, limit: int = 5) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    async with engine.connect() as conn:
        while True:
            page, cursor = await search_events(conn, found, limit=limit, cursor=cursor)
            events += page
            if cursor is None:
                return events


async def test_pages_hold_every_event_once_newest_first(indexed: tuple[AsyncEngine, int]) -> None:
    engine, total = indexed
    events = await _all(engine, AuditFilter(), limit=6)
    sequences = [e["sequence"] for e in events]
    assert sequences == sorted(set(sequences), reverse=True)
    assert len(events) == total


async def test_filters_match_exactly(indexed: tuple[AsyncEngine, int]) -> None:
    engine, _ = indexed
    decided = await _all(engine, AuditFilter(actor="user:alice"))
    assert {e["type"] for e in decided} == {"run.approval.decided"}
    assert sorted(e["run_id"] for e in decided) == sorted(RUNS)
    started = await _all(engine, AuditFilter(type="run.requested", run_id="exit"))
    assert [(e["actor"], e["workflow"]) for e in started] == [("api_key:key-7f3a", "backup")]
    window = AuditFilter(since=T0 + timedelta(seconds=2000), until=T0 + timedelta(seconds=2999))
    assert {e["run_id"] for e in await _all(engine, window)} == {"exit"}


@pytest.mark.parametrize(
    "hostile",
    ["%", "*", "user:%", "' OR '1'='1", "user:alice'; DROP TABLE audit_events; --", "\\", "_____"],
)
async def test_wildcards_and_sql_in_a_filter_find_nothing(
    indexed: tuple[AsyncEngine, int], hostile: str
) -> None:
    engine, total = indexed
    for found in (
        AuditFilter(actor=hostile),
        AuditFilter(type=hostile),
        AuditFilter(run_id=hostile),
    ):
        assert await _all(engine, found) == []
    assert len(await _all(engine, AuditFilter(), limit=500)) == total  # the table is intact


async def test_a_cursor_not_handed_out_is_refused(indexed: tuple[AsyncEngine, int]) -> None:
    engine, _ = indexed
    async with engine.connect() as conn:
        for bad in (
            "",
            "x",
            "YXVkaXQ6LTE",
            "YXVkaXQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5",
            "cnVuOjEw",
            "%%%",
        ):
            with pytest.raises(InvalidCursor):
                await search_events(conn, AuditFilter(), cursor=bad)


async def test_failures_grouped_by_error_workflow_and_agent_latest_first(
    indexed: tuple[AsyncEngine, int],
) -> None:
    engine, _ = indexed
    async with engine.connect() as conn:
        groups = await failures(conn, T0 - timedelta(days=1))
        by_agent = await failures(conn, T0 - timedelta(days=1), agent="agent-y")
        none_yet = await failures(conn, datetime.now(UTC))
    assert [(g["error_type"], g["workflow"], g["agent_id"]) for g in groups] == [
        ("timeout", "deploy-kuma", "agent-x"),
        ("exit_nonzero", "backup", "agent-y"),
    ]
    timeouts = groups[0]
    assert (timeouts["failed_runs"], timeouts["failed_nodes"], timeouts["nodes"]) == (
        2,
        2,
        ["apply"],
    )
    assert timeouts["recent_runs"] == ["late-timeout", "early-timeout"]
    assert timeouts["last_message"] == "timeout on agent-x"
    # A node failure that was retried (ok-1's plan) is no post-mortem's business.
    assert "provider_error" not in {g["error_type"] for g in groups}
    assert [g["agent_id"] for g in by_agent] == ["agent-y"]
    assert none_yet == []
