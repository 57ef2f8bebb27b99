"""Decisions on a run: start, claim, cancel, approve, fail an unregistered workflow."""

from __future__ import annotations

import pytest

from chiffon.commands import ApproveNode, CancelRun, StartRun
from chiffon.events import runs as ev
from chiffon.executor.domain import (
    ClaimRun,
    IdempotencyConflict,
    InvalidInputs,
    NotWaitingForApproval,
    RunAlreadyEnded,
    RunNotFound,
    RunState,
    decide_approval,
    decide_cancel,
    decide_claim,
    decide_fail_unregistered,
    decide_start,
    request_digest,
)
from chiffon.workflow import load_spec

from .support import ALICE, DIGEST, RUN_ID, at, claimed, fold, requested

SPEC = load_spec(
    """
name: brief
version: 1
inputs: {topic: {type: string}, words: {type: integer, default: 100}}
nodes:
  - {id: write, type: llm, model: chiffon/echo, prompt: "About {topic}", output: {text: string}}
""",
    filename="brief.yaml",
)


def start(**inputs: object) -> StartRun:
    return StartRun(actor=ALICE, workflow="brief", inputs=inputs, idempotency_key="k1")


# -- start -------------------------------------------------------------------------


def test_start_requests_the_run_with_inputs_checked_and_defaults_filled() -> None:
    (event,) = decide_start(RunState(RUN_ID), start(topic="tides"), SPEC, DIGEST, at(0))
    assert (event.workflow, event.version, event.digest) == ("brief", 1, DIGEST)
    assert event.inputs == {"topic": "tides", "words": 100}
    assert event.idempotency_key == "k1"
    assert event.request_digest == request_digest("brief", None, {"topic": "tides"})


def test_start_with_inputs_that_do_not_match_is_refused_with_each_problem() -> None:
    with pytest.raises(InvalidInputs) as refused:
        decide_start(RunState(RUN_ID), start(words="many", extra=1), SPEC, DIGEST, at(0))
    assert refused.value.code == "invalid"
    assert str(refused.value) == "the inputs do not match workflow 'brief' v1"
    assert {d["path"] for d in refused.value.details} == {"inputs"}
    assert len(refused.value.details) >= 2


def test_the_same_request_again_starts_nothing_new() -> None:
    command = start(topic="tides")
    (first,) = decide_start(RunState(RUN_ID), command, SPEC, DIGEST, at(0))
    state = fold(first)
    assert decide_start(state, command, SPEC, DIGEST, at(1)) == []


def test_a_different_request_under_the_same_key_is_refused() -> None:
    (first,) = decide_start(RunState(RUN_ID), start(topic="tides"), SPEC, DIGEST, at(0))
    with pytest.raises(IdempotencyConflict) as refused:
        decide_start(fold(first), start(topic="rain"), SPEC, DIGEST, at(1))
    assert refused.value.code == "conflict"
    assert refused.value.details[0]["path"] == "idempotency_key"
    assert "'k1' was already used for a different request (run run-1)" in str(refused.value)


# -- claim -------------------------------------------------------------------------

CLAIM = ClaimRun(work_seq=1, executor="executor-1", pid=7)


def test_a_pending_run_is_claimed_as_a_first_start() -> None:
    (claim,) = decide_claim(fold(requested()), CLAIM, at(0))
    assert (claim.executor, claim.pid, claim.work_seq, claim.resumed) == ("executor-1", 7, 1, False)


def test_a_run_claimed_before_is_claimed_as_resumed() -> None:
    state = fold(
        requested(),
        claimed(work_seq=1),
        ev.RunSuspended(),
        ev.ApprovalDecided(node_id="a", approved=True),
    )
    (claim,) = decide_claim(state, ClaimRun(work_seq=4, executor="executor-2", pid=8), at(0))
    assert claim.resumed


@pytest.mark.parametrize(
    "state",
    [
        RunState(RUN_ID),  # no such run
        fold(requested(), claimed(), ev.RunCompleted(duration_ms=1)),  # ended
        fold(requested(), claimed(work_seq=5)),  # held for another item
        fold(requested(), claimed(), ev.RunSuspended()),  # waiting for an approval
        fold(requested(), claimed(), ev.RunPaused(reason="budget")),  # paused
    ],
    ids=["unknown", "ended", "held-elsewhere", "waiting", "paused"],
)
def test_a_run_that_does_not_need_this_replica_is_not_claimed(state: RunState) -> None:
    assert decide_claim(state, CLAIM, at(0)) == []


def test_a_redelivered_item_of_a_silent_holder_is_taken_over() -> None:
    state = fold(requested(), claimed(work_seq=1, executor="executor-2"))
    (claim,) = decide_claim(state, CLAIM, at(0))
    assert (claim.executor, claim.resumed) == ("executor-1", True)


def test_a_paused_run_with_a_cancel_is_claimed_to_record_its_end() -> None:
    state = fold(requested(), claimed(), ev.RunPaused(reason="budget"), ev.CancelRequested())
    assert len(decide_claim(state, ClaimRun(work_seq=9, executor="e", pid=1), at(0))) == 1


# -- cancel ------------------------------------------------------------------------


def cancel(reason: str | None = "wrong input") -> CancelRun:
    return CancelRun(actor=ALICE, run_id=RUN_ID, reason=reason)


def test_cancelling_a_run_nobody_holds_ends_it_now_with_its_duration() -> None:
    requested_at_zero = fold(requested())
    asked, ended = decide_cancel(requested_at_zero, cancel(), at(3))
    assert asked == ev.CancelRequested(reason="wrong input")
    assert isinstance(ended, ev.RunCancelled)
    assert (ended.reason, ended.duration_ms) == ("wrong input", 3000.0)


def test_cancelling_without_a_reason_says_cancelled() -> None:
    _, ended = decide_cancel(fold(requested()), cancel(None), at(0))
    assert isinstance(ended, ev.RunCancelled) and ended.reason == "cancelled"


def test_cancelling_a_held_run_asks_its_holder_once() -> None:
    held = fold(requested(), claimed())
    assert decide_cancel(held, cancel(), at(1)) == [ev.CancelRequested(reason="wrong input")]
    asked = fold(requested(), claimed(), ev.CancelRequested(reason="x"))
    assert decide_cancel(asked, cancel(), at(1)) == []


def test_cancelling_an_unknown_or_ended_run_is_refused() -> None:
    with pytest.raises(RunNotFound) as missing:
        decide_cancel(RunState(RUN_ID), cancel(), at(0))
    assert (missing.value.code, str(missing.value)) == ("not_found", "no run 'run-1'")
    with pytest.raises(RunAlreadyEnded) as over:
        decide_cancel(fold(requested(), ev.RunCancelled(duration_ms=0)), cancel(), at(0))
    assert (over.value.code, str(over.value)) == ("conflict", "run run-1 already ended (cancelled)")


# -- approve -----------------------------------------------------------------------


def approve(node: str = "review", yes: bool = True) -> ApproveNode:
    return ApproveNode(actor=ALICE, run_id=RUN_ID, node_id=node, approve=yes, comment="fine")


def test_a_decision_goes_to_the_latest_waiting_iteration() -> None:
    state = fold(
        requested(),
        ev.ApprovalRequested(node_id="review", message="ok?", iteration=1),
        ev.ApprovalDecided(node_id="review", approved=False, iteration=1),
        ev.ApprovalRequested(node_id="review", message="ok now?", iteration=2),
    )
    decision = decide_approval(state, approve(), at(0))
    assert decision == ev.ApprovalDecided(
        node_id="review", approved=True, comment="fine", iteration=2
    )


def test_a_decision_nobody_waits_for_is_refused_naming_what_is_waited_on() -> None:
    state = fold(requested(), ev.ApprovalRequested(node_id="publish", message="go?"))
    with pytest.raises(NotWaitingForApproval) as refused:
        decide_approval(state, approve("review"), at(0))
    assert str(refused.value) == (
        "run run-1 is not waiting for an approval of node 'review'; it waits on: publish"
    )
    with pytest.raises(NotWaitingForApproval, match="it waits on no approval"):
        decide_approval(fold(requested()), approve("review"), at(0))


def test_deciding_on_an_unknown_or_ended_run_is_refused() -> None:
    with pytest.raises(RunNotFound):
        decide_approval(RunState(RUN_ID), approve(), at(0))
    ended = fold(
        requested(),
        ev.ApprovalRequested(node_id="review", message="?"),
        ev.RunCompleted(duration_ms=0),
    )
    with pytest.raises(RunAlreadyEnded):
        decide_approval(ended, approve(), at(0))


# -- an unregistered workflow ------------------------------------------------------


def test_a_run_of_an_unregistered_version_fails_naming_it() -> None:
    (failed,) = decide_fail_unregistered(fold(requested()), at(1.5))
    assert failed.error.type == "workflow_not_found"
    assert failed.error.message == (
        "workflow 'brief' version 1 (digest dddddddddddd) is not registered"
    )
    assert failed.duration_ms == 1500.0
