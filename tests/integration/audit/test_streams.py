"""The audit index of every audited stream, projected into PostgreSQL from events in the
in-memory store, and the one search over all of them: its order across streams, its
pages, rebuilding one stream's index and replaying a batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.audit.index import AuditIndexProjection
from chiffon.audit.search import AuditFilter, search_events
from chiffon.audit.streams import STREAM_PROJECTIONS, KeysIndexProjection
from chiffon.audit.tables import STREAM_TABLES, audit_events
from chiffon.events import CATALOG
from chiffon.eventstore import AggregateKey
from chiffon.eventstore.memory import InMemoryEventStore
from chiffon.projections import Projection, ProjectionRunner
from tests.unit.audit.sample import run_events
from tests.unit.audit.stream_sample import (
    agent_events,
    budget_events,
    key_events,
    trigger_events,
    workflow_events,
)

# Audited events per stream (the ledger reservation and agent.came_back are left out).
EXPECTED = {"RUNS": 0, "KEYS": 2, "COSTS": 1, "AGENTS": 3, "TRIGGERS": 3, "WORKFLOWS": 1}


def _projections() -> list[Projection]:
    return [AuditIndexProjection(), *(p() for p in STREAM_PROJECTIONS)]


@pytest.fixture(scope="module")
async def indexed(audit_engine: AsyncEngine) -> AsyncIterator[InMemoryEventStore]:
    store = InMemoryEventStore(CATALOG)
    run = run_events("run-1", start=25)  # interleaved in time with the others
    await store.append(AggregateKey("run", "run-1"), run)
    EXPECTED["RUNS"] = len(run)
    for envelopes in (
        key_events(),
        budget_events(),
        agent_events(),
        trigger_events(),
        workflow_events(),
    ):
        for envelope in envelopes:
            await store.append(AggregateKey(envelope.aggregate, envelope.aggregate_id), [envelope])
    for projection in _projections():
        await ProjectionRunner(store, audit_engine, projection, batch_size=2).catch_up()
    yield store


async def _all(engine: AsyncEngine, found: AuditFilter, limit: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    async with engine.connect() as conn:
        while True:
            page, cursor = await search_events(conn, found, limit=limit, cursor=cursor)
            assert len(page) <= limit
            events += page
            if cursor is None:
                return events


async def _counts(engine: AsyncEngine) -> dict[str, int]:
    tables = {"RUNS": audit_events, **STREAM_TABLES}
    async with engine.connect() as conn:
        return {
            context: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for context, table in tables.items()
        }


async def test_pages_cross_streams_newest_first_each_event_once(
    indexed: InMemoryEventStore, audit_engine: AsyncEngine
) -> None:
    events = await _all(audit_engine, AuditFilter(), limit=3)
    assert len(events) == sum(EXPECTED.values())
    assert len({(e["context"], e["sequence"]) for e in events}) == len(events)
    times = [e["at"] for e in events]
    assert times == sorted(times, reverse=True)  # every clock here is on time
    contexts = [e["context"] for e in events]
    assert set(contexts) == set(EXPECTED) and contexts[-1] == "WORKFLOWS"  # the oldest
    # Run events and the others alternate in time: pages end amid other streams.
    assert any(len(set(contexts[i : i + 3])) > 1 for i in range(0, len(contexts), 3))
    revoked = next(e for e in events if e["type"] == "apikey.revoked")
    assert (revoked["run_id"], revoked["aggregate"], revoked["aggregate_id"]) == (
        None,
        "apikey",
        "key-1",
    )


async def test_filters_find_what_an_auditor_asks_about(
    indexed: InMemoryEventStore, audit_engine: AsyncEngine
) -> None:
    by_admin = await _all(audit_engine, AuditFilter(actor="api_key:key-admin"), limit=4)
    assert [e["type"] for e in by_admin] == [
        "agent.deregistered",
        "schedule.created",
        "apikey.revoked",
        "trigger.secrets_set",
        "budget.set",
        "trigger.created",
        "apikey.created",
        "agent.credential.issued",
        "workflow.version_registered",
    ]
    key = await _all(audit_engine, AuditFilter(aggregate_id="key-1"), limit=10)
    assert [e["type"] for e in key] == ["apikey.revoked", "apikey.created"]
    triage = await _all(audit_engine, AuditFilter(context="WORKFLOWS"), limit=10)
    assert [(e["name"], e["version"]) for e in triage] == [("triage", 3)]
    run = await _all(audit_engine, AuditFilter(run_id="run-1"), limit=5)
    assert [e["sequence"] for e in run] == list(range(EXPECTED["RUNS"], 0, -1))
    assert {e["context"] for e in run} == {"RUNS"}


async def test_rebuilding_one_stream_and_replaying_a_batch_write_nothing_twice(
    indexed: InMemoryEventStore, audit_engine: AsyncEngine
) -> None:
    before = await _counts(audit_engine)
    assert before == EXPECTED
    await ProjectionRunner(indexed, audit_engine, KeysIndexProjection()).rebuild(workers=1)
    assert await _counts(audit_engine) == EXPECTED  # the other streams' rows are untouched
    for projection in _projections():
        events = [
            batch
            async for batch in indexed.subscribe_batches(
                projection.context, start=1, subjects=None, batch=1000, live=False
            )
        ]
        async with audit_engine.begin() as conn:
            for batch in events:
                await projection.apply(conn, batch)
    assert await _counts(audit_engine) == EXPECTED
