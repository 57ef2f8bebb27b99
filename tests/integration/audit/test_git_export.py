"""The git export of finished runs, projected from a stream of 100 runs, then replayed."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.audit.gitexport import GitAuditTrail, GitExportProjection, record_path
from chiffon.audit.record import audit_record
from chiffon.events import CATALOG
from chiffon.eventstore import AggregateKey
from chiffon.eventstore.memory import InMemoryEventStore
from chiffon.projections import ProjectionRunner
from tests.unit.audit.sample import run_events

RUNS = 100


async def test_100_runs_replayed_leave_100_commits_each_the_runs_events(
    audit_engine: AsyncEngine, tmp_path: Path
) -> None:
    store = InMemoryEventStore(CATALOG)
    events = {}
    for i in range(RUNS):
        run_id = f"run-{i:03d}"
        events[run_id] = run_events(
            run_id, fail_with="timeout" if i % 7 == 0 else None, start=i * 100
        )
        await store.append(AggregateKey("run", run_id), events[run_id])
    # A run still going is not exported.
    await store.append(AggregateKey("run", "still-running"), run_events("still-running")[:5])

    trail = GitAuditTrail(tmp_path / "audit.git")
    projection = GitExportProjection(store, trail)
    runner = ProjectionRunner(store, audit_engine, projection, batch_size=30)
    await runner.catch_up()
    assert projection.committed == RUNS
    assert trail.count_commits() == RUNS

    await runner.rebuild()  # replays the whole stream from its first event
    assert projection.committed == RUNS
    assert trail.count_commits() == RUNS

    for run_id in ("run-000", "run-042", "run-099"):
        record = audit_record(run_id, events[run_id])
        committed = trail.read(record_path(record))
        assert committed == record
        assert [e["type"] for e in committed["timeline"]] == [e.type for e in events[run_id]]
    assert not trail.contains(
        record_path(audit_record("still-running", run_events("still-running")))
    )
    trail.close()
