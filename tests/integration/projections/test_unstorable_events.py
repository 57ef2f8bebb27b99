"""An event holding a NUL does not stop the runs read model (issue 16).

The executor makes what it records storable, but a stream written before that may hold
a NUL, which PostgreSQL refuses in text and JSONB (``unsupported Unicode escape
sequence``): the projection stopped there, for every run. It now writes U+FFFD instead.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.events import Actor, new_event
from chiffon.events import runs as ev
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.projections import ProjectionRunner
from chiffon.readmodels.projections import RunsProjection
from chiffon.readmodels.queries import get_run
from tests.integration.projections.support import position

USER = Actor(kind="user", id="alice\x00")
EXECUTOR = Actor.service("executor", 1)
NUL = "\x00"
FFFD = "\ufffd"


async def test_events_holding_a_nul_are_projected_with_the_replacement_to_the_end(
    store: JetStreamEventStore, engine: AsyncEngine
) -> None:
    run_id = "run-nul"
    key = AggregateKey("run", run_id)
    payloads: list[tuple[object, Actor]] = [
        (
            ev.RunRequested(
                workflow="w",
                version=1,
                digest="d" * 64,
                inputs={"topic": f"a{NUL}b", f"k{NUL}": {"deep": [f"{NUL}"]}},
                idempotency_key=f"key{NUL}",
            ),
            USER,
        ),
        (ev.RunClaimed(executor=f"executor-1{NUL}", pid=1, work_seq=1), EXECUTOR),
        (ev.NodeStarted(node_id="ask", node_type="llm", attempt=1), EXECUTOR),
        (
            ev.LlmCalled(
                node_id="ask",
                attempt=1,
                provider="p",
                model=f"m{NUL}",
                latency_ms=1.0,
                finish_reason=NUL,
            ),
            EXECUTOR,
        ),
        (
            ev.NodeCompleted(
                node_id="ask", attempt=1, outputs={"ask": f"Paris{NUL}"}, duration_ms=1.0
            ),
            EXECUTOR,
        ),
        (ev.NodeStarted(node_id="ok", node_type="approval", attempt=1), EXECUTOR),
        (ev.ApprovalRequested(node_id="ok", message=f"publish{NUL}?"), EXECUTOR),
        (ev.ApprovalDecided(node_id="ok", approved=False, comment=f"no{NUL}"), USER),
        (
            ev.RunFailed(
                error=ev.ErrorInfo(type="provider_error", message=f"bad{NUL}", node_id="ask"),
                duration_ms=5.0,
            ),
            EXECUTOR,
        ),
    ]
    for payload, actor in payloads:  # straight to the store: no edge, as an old stream
        await store.append(key, [new_event(payload, aggregate_id=run_id, actor=actor)])
    last = await store.last_sequence("RUNS")

    reached = await ProjectionRunner(store, engine, RunsProjection()).catch_up()

    assert reached == last
    assert await position(engine, RunsProjection.name) == last
    run = await get_run(engine, run_id)
    assert run is not None
    assert run.status == "failed"
    assert run.inputs == {"topic": f"a{FFFD}b", f"k{FFFD}": {"deep": [FFFD]}}
    assert run.idempotency_key == f"key{FFFD}"
    assert run.executor == f"executor-1{FFFD}"
    assert run.requested_by.endswith(f"alice{FFFD}") or FFFD in run.requested_by
    assert run.error is not None and run.error.message == f"bad{FFFD}"
    (ask, ok) = run.nodes
    assert ask.outputs == {"ask": f"Paris{FFFD}"}
    assert ask.model == f"m{FFFD}"
    (approval,) = run.approvals
    assert approval.message == f"publish{FFFD}?"
    assert approval.comment == f"no{FFFD}"

    # A run after it is projected as usual: the projection did not stop.
    after = "run-after"
    requested = ev.RunRequested(workflow="w", version=1, digest="d" * 64, inputs={"x": 1})
    await store.append(
        AggregateKey("run", after), [new_event(requested, aggregate_id=after, actor=USER)]
    )
    assert await ProjectionRunner(store, engine, RunsProjection()).catch_up() == last + 1
    again = await get_run(engine, after)
    assert again is not None and again.inputs == {"x": 1}
