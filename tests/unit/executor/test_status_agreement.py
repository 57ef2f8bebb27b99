"""Property: on any sequence of a run's events, the runs read model shows the status the
executor's own fold holds, after every event.

Both fold the status through ``chiffon.events.run_status``, but each keeps its own
count of undecided approvals (the executor in its state, the read model in its
``run_approvals`` rows): this is what would drift.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chiffon.events import Actor, EventPayload, new_event
from chiffon.events import runs as ev
from chiffon.eventstore import RecordedEvent
from chiffon.executor.domain import RunState, evolve
from chiffon.readmodels.projections import ApprovalKey, fold_approvals, fold_run, open_approvals

RUN_ID = "run-1"
ACTOR = Actor(kind="user", id="alice")
NODES = st.sampled_from(["draft", "review", "publish"])
ITERATIONS = st.integers(min_value=1, max_value=2)
ERROR = ev.ErrorInfo(type="boom", message="it broke")

EVENTS: st.SearchStrategy[EventPayload] = st.one_of(
    st.builds(
        ev.RunClaimed, executor=st.sampled_from(["executor-1", "executor-2"]), pid=st.just(1)
    ),
    st.builds(ev.NodeStarted, node_id=NODES, node_type=st.just("llm"), attempt=st.just(1)),
    st.builds(ev.NodeCompleted, node_id=NODES, attempt=st.just(1), duration_ms=st.just(1.0)),
    st.builds(ev.ApprovalRequested, node_id=NODES, message=st.just("ok?"), iteration=ITERATIONS),
    st.builds(ev.ApprovalDecided, node_id=NODES, approved=st.booleans(), iteration=ITERATIONS),
    st.builds(ev.RunSuspended),
    st.builds(ev.CancelRequested, reason=st.none() | st.just("stop")),
    st.builds(ev.RunPaused, reason=st.sampled_from(["no_capacity", "budget"])),
    st.builds(ev.RunResumed),
    st.builds(ev.RunCompleted, duration_ms=st.just(5.0)),
    st.builds(ev.RunFailed, error=st.just(ERROR), duration_ms=st.just(5.0)),
    st.builds(ev.RunCancelled, reason=st.none() | st.just("stop"), duration_ms=st.just(5.0)),
    st.builds(
        ev.LlmCalled,
        node_id=NODES,
        attempt=st.just(1),
        provider=st.just("p"),
        model=st.just("m"),
        latency_ms=st.just(1.0),
    ),
)
REQUEST = ev.RunRequested(workflow="brief", version=1, digest="d" * 64)
RUNS = st.lists(EVENTS, max_size=40).map(lambda rest: [REQUEST, *rest])


def recorded(payload: EventPayload, sequence: int) -> RecordedEvent:
    envelope = new_event(payload, aggregate_id=RUN_ID, actor=ACTOR)
    return RecordedEvent(envelope, "RUNS", sequence, "")


@settings(max_examples=400, deadline=None)
@given(RUNS)
def test_the_read_model_and_the_executor_agree_on_the_status(
    payloads: list[EventPayload],
) -> None:
    state = RunState(RUN_ID)
    row: dict[str, Any] | None = None
    approvals: dict[ApprovalKey, dict[str, Any]] = {}
    for sequence, payload in enumerate(payloads, start=1):
        event = recorded(payload, sequence)
        state = evolve(state, event.envelope, sequence)
        fold_approvals(approvals, event, "brief")
        row = fold_run(row, event, open_approvals(approvals, RUN_ID))
        assert row is not None
        assert row["status"] == state.status, (sequence, payload)
        assert (row["status"] in ev.TERMINAL_STATUSES) == state.ended
        assert row["cancel_requested"] == state.cancel_requested
        assert row["claims"] == state.claims


@settings(max_examples=100, deadline=None)
@given(RUNS)
def test_once_ended_a_run_stays_ended_in_both(payloads: list[EventPayload]) -> None:
    state = RunState(RUN_ID)
    row: dict[str, Any] | None = None
    ended = False
    for sequence, payload in enumerate(payloads, start=1):
        event = recorded(payload, sequence)
        state = evolve(state, event.envelope, sequence)
        row = fold_run(row, event, 0)
        assert row is not None
        ended = ended or state.ended
        assert state.ended == ended == (row["status"] in ev.TERMINAL_STATUSES)
