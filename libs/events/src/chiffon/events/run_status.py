"""The run's status transition: the one fold of a run's status, shared by every reader.

The executor (deciding what a run needs) and the runs read model (what users see) both
fold a run's status from its events. They used to do it each in their own code, which
could drift; both now call ``next_status``, and a property test checks that their
folds agree on any event sequence.

Pure and cheap (a dict lookup and a comparison): the executor folds on its hot path.
"""

from __future__ import annotations

from collections.abc import Callable

from chiffon.events.envelope import EventPayload
from chiffon.events.runs import (
    TERMINAL_STATUSES,
    ApprovalDecided,
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunPaused,
    RunRequested,
    RunResumed,
    RunStatus,
    RunSuspended,
)

INITIAL_STATUS: RunStatus = "pending"

_Transition = Callable[[RunStatus, int], RunStatus]


def _unless_ended(target: RunStatus) -> _Transition:
    """Move to ``target`` unless the run already ended (a late claim or pause changes
    nothing about a run that is over)."""

    def transition(status: RunStatus, open_approvals: int) -> RunStatus:
        return status if status in TERMINAL_STATUSES else target

    return transition


def _always(target: RunStatus) -> _Transition:
    def transition(status: RunStatus, open_approvals: int) -> RunStatus:
        return target

    return transition


def _after_decision(status: RunStatus, open_approvals: int) -> RunStatus:
    """A run waiting for approvals is runnable again once none is left undecided."""
    return "pending" if status == "waiting_approval" and open_approvals == 0 else status


def _after_resume(status: RunStatus, open_approvals: int) -> RunStatus:
    return "pending" if status == "paused" else status


_TRANSITIONS: dict[type[EventPayload], _Transition] = {
    RunRequested: _always("pending"),
    RunClaimed: _unless_ended("running"),
    RunSuspended: _unless_ended("waiting_approval"),
    RunPaused: _unless_ended("paused"),
    ApprovalDecided: _after_decision,
    RunResumed: _after_resume,
    RunCompleted: _always("succeeded"),
    RunFailed: _always("failed"),
    RunCancelled: _always("cancelled"),
}

STATUS_EVENTS: frozenset[type[EventPayload]] = frozenset(_TRANSITIONS)
"""The payload types that can change a run's status; every other event leaves it as is."""


def next_status(status: RunStatus, payload: EventPayload, open_approvals: int = 0) -> RunStatus:
    """The run's status after ``payload``.

    ``open_approvals`` is the number of approval requests still undecided *after* the
    event: it only matters for a decision, which makes a waiting run pending again
    when it was the last one.
    """
    transition = _TRANSITIONS.get(type(payload))
    return status if transition is None else transition(status, open_approvals)
