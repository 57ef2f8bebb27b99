"""The run's fold: every event type, and the state left untouched by it."""

from __future__ import annotations

import dataclasses

import pytest

from chiffon.events import EventPayload
from chiffon.events import runs as ev
from chiffon.executor.domain import INTERRUPTED, RunState, evolve

from .support import ALICE, BOB, RUN_ID, T0, at, claimed, event, fold, requested


def test_a_new_run_is_pending_and_does_not_exist() -> None:
    state = RunState(RUN_ID)
    assert (state.exists, state.status, state.version, state.held) == (False, "pending", 0, False)


def test_the_request_records_who_asked_and_when() -> None:
    state = RunState(RUN_ID)
    after = evolve(state, event(requested(topic="tides"), actor=ALICE, seconds=5), 7)
    assert after.exists and after.request is not None
    assert after.request.inputs == {"topic": "tides"}
    assert (after.requested_by, after.requested_at, after.version) == (ALICE, at(5), 7)
    assert after.status == "pending"


def test_evolve_leaves_the_previous_state_as_it_was() -> None:
    before = fold(requested())
    after = evolve(before, event(claimed()), 2)
    assert (before.status, before.holder, before.version) == ("pending", None, 1)
    assert (after.status, after.holder, after.version) == ("running", "executor-1", 2)


def test_the_state_and_its_parts_cannot_be_changed() -> None:
    state = fold(requested(), ev.NodeStarted(node_id="a", node_type="llm", attempt=1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.status = "failed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        state.nodes[("b", 1)] = state.nodes[("a", 1)]  # type: ignore[index]
    with pytest.raises(AttributeError):
        state.nodes[("a", 1)].started.append(2)  # type: ignore[attr-defined]


def test_a_claim_names_the_holder_and_counts() -> None:
    state = fold(requested(), claimed(work_seq=1), claimed(work_seq=1, executor="executor-2"))
    assert (state.holder, state.holder_pid, state.work_seq) == ("executor-2", 42, 1)
    assert (state.claims, state.claim_seq, state.status) == (2, 3, "running")


def test_node_attempts_failures_and_completion_are_recorded_per_iteration() -> None:
    failure = ev.NodeFailed(
        node_id="a",
        attempt=1,
        error=ev.ErrorInfo(type="timeout", message="slow"),
        will_retry=True,
        duration_ms=1,
    )
    done = ev.NodeCompleted(node_id="a", attempt=2, outputs={"x": 1}, duration_ms=1)
    state = fold(
        requested(),
        claimed(),
        ev.NodeStarted(node_id="a", node_type="llm", attempt=1),
        failure,
        ev.NodeStarted(node_id="a", node_type="llm", attempt=2),
        done,
        ev.NodeStarted(node_id="a", node_type="llm", attempt=1, iteration=2),
    )
    first = state.nodes[("a", 1)]
    assert (first.started, first.failures, first.completed) == ((1, 2), (failure,), done)
    assert (first.open_attempt, first.retry_failures, first.final_failure) == (None, 1, None)
    second = state.nodes[("a", 2)]
    assert (second.started, second.open_attempt) == ((1,), 1)


def test_an_interrupted_attempt_does_not_count_against_retries() -> None:
    def failed(attempt: int, kind: str, will_retry: bool) -> ev.NodeFailed:
        error = ev.ErrorInfo(type=kind, message="x")
        return ev.NodeFailed(
            node_id="a", attempt=attempt, error=error, will_retry=will_retry, duration_ms=0
        )

    state = fold(
        requested(),
        ev.NodeStarted(node_id="a", node_type="llm", attempt=1),
        failed(1, INTERRUPTED, True),
        ev.NodeStarted(node_id="a", node_type="llm", attempt=2),
        failed(2, "timeout", False),
    )
    node = state.nodes[("a", 1)]
    assert node.retry_failures == 1
    assert node.final_failure is not None and node.final_failure.attempt == 2


def test_llm_calls_add_up_their_tokens() -> None:
    def call(prompt: int, completion: int) -> ev.LlmCalled:
        return ev.LlmCalled(
            node_id="a",
            attempt=1,
            provider="p",
            model="m",
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=1,
        )

    state = fold(requested(), call(10, 3), call(5, 2))
    assert (state.prompt_tokens, state.completion_tokens) == (15, 5)


def test_approvals_wait_and_a_decision_makes_the_run_pending_when_none_is_left() -> None:
    state = fold(
        requested(),
        claimed(),
        ev.ApprovalRequested(node_id="a", message="ok?"),
        ev.ApprovalRequested(node_id="b", message="ok?"),
        ev.RunSuspended(waiting_for=["a", "b"]),
    )
    assert (state.status, state.held) == ("waiting_approval", False)
    assert {a.node_id for a in state.pending_approvals()} == {"a", "b"}
    one = evolve(state, event(ev.ApprovalDecided(node_id="a", approved=True), actor=BOB), 6)
    assert one.status == "waiting_approval"
    assert one.approvals[("a", 1)].decided_by == BOB
    both = evolve(one, event(ev.ApprovalDecided(node_id="b", approved=False)), 7)
    assert (both.status, both.pending_approvals()) == ("pending", [])


def test_a_decision_on_no_request_changes_nothing_but_the_version() -> None:
    state = fold(requested(), ev.ApprovalDecided(node_id="ghost", approved=True))
    assert (dict(state.approvals), state.status, state.version) == ({}, "pending", 2)


def test_cancel_requested_is_noted_with_its_reason() -> None:
    state = fold(requested(), claimed(), ev.CancelRequested(reason="wrong input"))
    assert (state.cancel_requested, state.cancel_reason, state.status) == (
        True,
        "wrong input",
        "running",
    )


def test_pause_lets_go_of_the_run_and_resume_makes_it_pending() -> None:
    paused = fold(requested(), claimed(), ev.RunPaused(reason="no_capacity"))
    assert (paused.status, paused.holder, paused.work_seq) == ("paused", None, None)
    resumed = evolve(paused, event(ev.RunResumed()), 4)
    assert resumed.status == "pending"


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        (ev.RunCompleted(duration_ms=1), "succeeded"),
        (ev.RunFailed(error=ev.ErrorInfo(type="x", message="y"), duration_ms=1), "failed"),
        (ev.RunCancelled(duration_ms=1), "cancelled"),
    ],
)
def test_an_ending_ends_the_run_and_nothing_after_reopens_it(
    ending: EventPayload, status: str
) -> None:
    state = fold(requested(), claimed(), ending, claimed(), ev.RunPaused(reason="budget"))
    assert (state.status, state.ended) == (status, True)


def test_agent_task_events_only_move_the_version_and_the_count() -> None:
    before = fold(requested(), claimed())
    task = ev.AgentTaskRequested(task_id="t", node_id="a", attempt=1)
    after = evolve(before, event(task), 9)
    assert (after.version, after.event_count) == (9, before.event_count + 1)
    assert dataclasses.replace(after, version=before.version, event_count=2) == before


def test_events_out_of_order_never_move_the_version_back() -> None:
    state = fold(requested(), claimed())
    assert evolve(state, event(ev.RunResumed()), 1).version == 2


def test_duration_is_measured_to_the_time_given() -> None:
    state = fold(requested())
    assert state.duration_ms(at(2.5)) == 2500.0
    assert state.duration_ms(at(-1)) == 0.0
    assert RunState(RUN_ID).duration_ms(T0) == 0.0


def test_from_events_is_the_same_fold() -> None:
    payloads = [requested(), claimed(), ev.RunSuspended()]
    envelopes = [(event(p), n) for n, p in enumerate(payloads, start=1)]
    folded = RunState.from_events(RUN_ID, envelopes)
    assert (folded.status, folded.version, folded.claims) == ("waiting_approval", 3, 1)
