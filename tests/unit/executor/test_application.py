"""Runs and Workflows on the in-memory event store: load, decide, append, and the
refusals the command bus answers with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chiffon.commands import ApproveNode, CancelRun, CommandRefused, RegisterWorkflow, StartRun
from chiffon.events import CATALOG, Actor, Envelope, EventPayload, new_event
from chiffon.events import runs as ev
from chiffon.eventstore import ANY, AggregateKey, AppendResult
from chiffon.executor.application import Runs, Workflows
from chiffon.executor.domain import RunState
from chiffon.executor.repository import RunRepository, WorkflowRepository
from tests.support.stores import ConflictingStore

ALICE = Actor(kind="user", id="alice")
BOB = Actor(kind="user", id="bob")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
BRIEF = """\
name: brief
version: {version}
inputs: {{topic: {{type: string}}}}
nodes:
  - {{id: write, type: llm, model: chiffon/echo, prompt: "{prompt}", output: {{text: string}}}}
"""


class Executor:
    """The executor's two application services over one in-memory store."""

    def __init__(self, store: ConflictingStore | None = None) -> None:
        self.store = store if store is not None else ConflictingStore(CATALOG)
        workflows = WorkflowRepository(self.store)
        self.repository = RunRepository(self.store)
        self.clock = NOW
        self.runs = Runs(self.store, workflows, self.repository, clock=lambda: self.clock)
        self.workflows = Workflows(self.store, workflows, clock=lambda: self.clock)

    async def register(self, version: int = 1, prompt: str = "Write about {topic}") -> Any:
        source = BRIEF.format(version=version, prompt=prompt)
        return await self.workflows.register(RegisterWorkflow(actor=ALICE, source=source))

    async def start(self, key: str | None = "k1", actor: Actor = ALICE, **inputs: Any) -> Any:
        command = StartRun(actor=actor, workflow="brief", inputs=inputs, idempotency_key=key)
        return await self.runs.start(command)

    async def record(self, run_id: str, *payloads: EventPayload) -> None:
        """Events an executor replica would append (a claim, an approval request, …)."""
        state = await self.repository.load(run_id)
        events = [new_event(p, aggregate_id=run_id, actor=BOB) for p in payloads]
        await self.store.append(AggregateKey("run", run_id), events, state.version)


@pytest.fixture
def executor() -> Executor:
    return Executor()


def refusal(error: pytest.ExceptionInfo[CommandRefused]) -> tuple[str, str]:
    return error.value.refusal.code, error.value.refusal.message


# -- Workflows.register ------------------------------------------------------------


async def test_a_workflow_registers_once_and_again_is_not_created(executor: Executor) -> None:
    first = await executor.register()
    assert (first["name"], first["version"], first["created"]) == ("brief", 1, True)
    again = await executor.register()
    assert again == {**first, "created": False}


async def test_other_content_under_a_registered_version_is_refused(executor: Executor) -> None:
    await executor.register()
    with pytest.raises(CommandRefused) as refused:
        await executor.register(prompt="Rewrite {topic}")
    code, message = refusal(refused)
    assert code == "conflict" and message.endswith("register it as version 2")
    assert refused.value.refusal.details[0]["path"] == "version"


async def test_an_invalid_workflow_is_refused_with_its_problems(executor: Executor) -> None:
    command = RegisterWorkflow(actor=ALICE, source="name: brief\nversion: 1\nnodes: []\n")
    with pytest.raises(CommandRefused) as refused:
        await executor.workflows.register(command)
    assert refused.value.refusal.code == "invalid"
    assert refused.value.refusal.details


async def test_a_registration_that_loses_a_race_decides_again(executor: Executor) -> None:
    executor.store.conflicts = 2
    assert (await executor.register())["created"] is True


async def test_a_registration_that_always_loses_is_unavailable(executor: Executor) -> None:
    executor.store.conflicts = 1_000
    with pytest.raises(CommandRefused) as refused:
        await executor.register()
    assert refusal(refused) == (
        "unavailable",
        "workflow 'brief' is being changed concurrently; retry",
    )


# -- Runs.start --------------------------------------------------------------------


async def test_a_start_requests_a_pending_run(executor: Executor) -> None:
    await executor.register()
    started = await executor.start(topic="tides")
    assert started["created"] is True
    assert (started["workflow"], started["version"], started["status"]) == ("brief", 1, "pending")
    state = await executor.repository.load(started["run_id"])
    assert state.request is not None and state.request.inputs == {"topic": "tides"}
    assert state.requested_by == ALICE


async def test_the_same_key_and_request_gives_the_same_run(executor: Executor) -> None:
    await executor.register()
    first = await executor.start(topic="tides")
    await executor.record(first["run_id"], ev.RunClaimed(executor="executor-1", pid=1))
    again = await executor.start(topic="tides")
    assert again == {**first, "status": "running", "created": False}
    other_user = await executor.start(actor=BOB, topic="tides")
    assert other_user["run_id"] != first["run_id"]


async def test_the_same_key_with_another_request_is_refused(executor: Executor) -> None:
    await executor.register()
    first = await executor.start(topic="tides")
    with pytest.raises(CommandRefused) as refused:
        await executor.start(topic="rain")
    code, message = refusal(refused)
    assert code == "conflict" and first["run_id"] in message
    assert refused.value.refusal.details[0]["path"] == "idempotency_key"


async def test_starts_without_a_key_are_separate_runs(executor: Executor) -> None:
    await executor.register()
    one, two = await executor.start(key=None, topic="a"), await executor.start(key=None, topic="a")
    assert one["run_id"] != two["run_id"] and one["created"] and two["created"]


async def test_a_start_of_what_is_not_registered_is_refused(executor: Executor) -> None:
    with pytest.raises(CommandRefused) as missing:
        await executor.start(topic="x")
    assert refusal(missing) == ("not_found", "no workflow named 'brief' is registered")
    await executor.register(1)
    await executor.register(2)
    command = StartRun(actor=ALICE, workflow="brief", version=9, inputs={"topic": "x"})
    with pytest.raises(CommandRefused) as no_version:
        await executor.runs.start(command)
    assert refusal(no_version) == (
        "not_found",
        "workflow 'brief' has no version 9 (versions: 1, 2)",
    )


async def test_a_start_sees_a_version_registered_a_moment_ago(executor: Executor) -> None:
    await executor.register(1)
    assert (await executor.start(key=None, topic="x"))["version"] == 1
    await executor.register(2)
    assert (await executor.start(key=None, topic="x"))["version"] == 2


async def test_a_start_with_wrong_inputs_is_refused(executor: Executor) -> None:
    await executor.register()
    with pytest.raises(CommandRefused) as refused:
        await executor.start(topic=3, colour="red")
    assert refusal(refused) == ("invalid", "the inputs do not match workflow 'brief' v1")
    assert {d["path"] for d in refused.value.refusal.details} == {"inputs"}


# -- Runs.cancel and Runs.approve ----------------------------------------------------


async def test_cancelling_a_pending_run_ends_it_with_its_duration(executor: Executor) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    executor.clock = datetime.now(UTC) + timedelta(seconds=2)
    result = await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id, reason="oops"))
    assert result == {"run_id": run_id, "status": "cancelled", "cancel_requested": True}
    state = await executor.repository.load(run_id)
    assert (state.status, state.cancel_reason) == ("cancelled", "oops")
    events, _ = await executor.store.read_aggregate(AggregateKey("run", run_id))
    assert events[-1].payload.duration_ms >= 1500


async def test_cancelling_a_held_run_asks_its_holder(executor: Executor) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    await executor.record(run_id, ev.RunClaimed(executor="executor-1", pid=1))
    result = await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id))
    assert result == {"run_id": run_id, "status": "running", "cancel_requested": True}


class HotRunStore(ConflictingStore):
    """A held run's holder at work: while ``hot``, every append that names a version
    loses the race; ``holder_next`` is appended by the holder right after the first
    append that names none."""

    hot = False
    holder_next: tuple[EventPayload, ...] = ()

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: Any = 0,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        if expected_version is not ANY:
            self.conflicts = 1 if self.hot else 0
            return await super().append(key, events, expected_version)
        result = await super().append(key, events, expected_version)
        holder, self.holder_next = self.holder_next, ()
        if holder:
            moved = [new_event(p, aggregate_id=key.aggregate_id, actor=BOB) for p in holder]
            await super().append(key, moved, ANY)
        return result


async def test_a_cancel_reaches_a_held_run_however_fast_it_appends() -> None:
    executor = Executor(HotRunStore(CATALOG))
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    await executor.record(run_id, ev.RunClaimed(executor="executor-1", pid=1))
    assert isinstance(executor.store, HotRunStore)
    executor.store.hot = True
    result = await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id))
    assert result == {"run_id": run_id, "status": "running", "cancel_requested": True}
    assert (await executor.repository.load(run_id)).cancel_requested


async def test_a_holder_that_let_go_before_taking_the_cancel_in_has_the_run_cancelled() -> None:
    executor = Executor(HotRunStore(CATALOG))
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    await executor.record(
        run_id,
        ev.RunClaimed(executor="executor-1", pid=1),
        ev.ApprovalRequested(node_id="review", message="ok?"),
    )
    assert isinstance(executor.store, HotRunStore)
    executor.store.holder_next = (ev.RunSuspended(waiting_for=["review"]),)
    result = await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id, reason="stop"))
    assert result["status"] == "cancelled"
    state = await executor.repository.load(run_id)
    assert (state.status, state.cancel_reason) == ("cancelled", "stop")


async def test_a_run_is_loaded_again_by_reading_only_what_came_since(
    executor: Executor,
) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    await executor.repository.load(run_id)
    await executor.record(run_id, ev.RunClaimed(executor="executor-1", pid=1))
    reads: list[int] = []
    read_aggregate = executor.store.read_aggregate

    async def counted(key: AggregateKey, *, after: int = 0) -> Any:
        events, version = await read_aggregate(key, after=after)
        reads.append(len(events))
        return events, version

    executor.store.read_aggregate = counted  # type: ignore[method-assign]
    state = await executor.repository.load(run_id)
    assert (state.status, state.holder, reads) == ("running", "executor-1", [1])
    assert state == RunState.from_events(
        run_id,
        [(e.envelope, e.sequence) for e in (await read_aggregate(AggregateKey("run", run_id)))[0]],
    )


async def test_cancelling_an_unknown_or_ended_run_is_refused(executor: Executor) -> None:
    with pytest.raises(CommandRefused) as missing:
        await executor.runs.cancel(CancelRun(actor=ALICE, run_id="nope"))
    assert refusal(missing) == ("not_found", "no run 'nope'")
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id))
    with pytest.raises(CommandRefused) as again:
        await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id))
    assert refusal(again) == ("conflict", f"run {run_id} already ended (cancelled)")


async def test_a_cancel_that_loses_a_race_decides_again_on_the_new_state(
    executor: Executor,
) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    executor.store.conflicts = 3
    result = await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id))
    assert result["status"] == "cancelled"


async def test_a_cancel_that_always_loses_is_unavailable(executor: Executor) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    executor.store.conflicts = 1_000
    with pytest.raises(CommandRefused) as refused:
        await executor.runs.cancel(CancelRun(actor=ALICE, run_id=run_id))
    assert refusal(refused) == ("unavailable", "the run is changing too fast; retry")


async def test_approving_the_last_waiting_node_makes_the_run_pending(executor: Executor) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    await executor.record(
        run_id,
        ev.RunClaimed(executor="executor-1", pid=1),
        ev.ApprovalRequested(node_id="review", message="ok?"),
        ev.RunSuspended(waiting_for=["review"]),
    )
    command = ApproveNode(actor=BOB, run_id=run_id, node_id="review", approve=True)
    result = await executor.runs.approve(command)
    assert result == {"run_id": run_id, "node_id": "review", "approved": True, "status": "pending"}
    state = await executor.repository.load(run_id)
    assert state.approvals[("review", 1)].decided_by == BOB


async def test_approving_what_is_not_waited_on_is_refused(executor: Executor) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    command = ApproveNode(actor=BOB, run_id=run_id, node_id="review", approve=True)
    with pytest.raises(CommandRefused) as refused:
        await executor.runs.approve(command)
    assert refusal(refused) == (
        "conflict",
        f"run {run_id} is not waiting for an approval of node 'review'; it waits on no approval",
    )


async def test_a_run_executed_here_is_loaded_from_its_live_fold(executor: Executor) -> None:
    await executor.register()
    run_id = (await executor.start(topic="x"))["run_id"]
    await executor.record(run_id, ev.RunClaimed(executor="executor-1", pid=1))
    events, _ = await executor.store.read_aggregate(AggregateKey("run", run_id))
    live = RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events])
    executor.repository.follow(run_id, lambda: live)
    afters: list[int] = []
    read_aggregate = executor.store.read_aggregate

    async def counted(key: AggregateKey, *, after: int = 0) -> Any:
        afters.append(after)
        return await read_aggregate(key, after=after)

    executor.store.read_aggregate = counted  # type: ignore[method-assign]
    assert (await executor.repository.load(run_id)).holder == "executor-1"
    assert afters == [live.version]  # nothing read that the live fold holds
