"""Events and commands for the executor's domain tests, without a store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chiffon.events import Actor, Envelope, EventPayload, new_event
from chiffon.events import runs as ev
from chiffon.executor.domain import RunState, evolve

ALICE = Actor(kind="user", id="alice")
BOB = Actor(kind="api_key", id="key-bob", name="bob")
EXECUTOR = Actor.service("executor", 1)
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN_ID = "run-1"
DIGEST = "d" * 64


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(payload: EventPayload, *, actor: Actor = EXECUTOR, seconds: float = 0.0) -> Envelope[Any]:
    return new_event(payload, aggregate_id=RUN_ID, actor=actor, occurred_at=at(seconds))


def requested(**inputs: Any) -> ev.RunRequested:
    return ev.RunRequested(workflow="brief", version=1, digest=DIGEST, inputs=inputs)


def claimed(work_seq: int = 1, executor: str = "executor-1") -> ev.RunClaimed:
    return ev.RunClaimed(executor=executor, pid=42, work_seq=work_seq)


def fold(*payloads: EventPayload, actor: Actor = EXECUTOR) -> RunState:
    """The run after ``payloads``, stored at sequences 1, 2, … one second apart."""
    state = RunState(RUN_ID)
    for sequence, payload in enumerate(payloads, start=1):
        state = evolve(state, event(payload, actor=actor, seconds=sequence - 1), sequence)
    return state
