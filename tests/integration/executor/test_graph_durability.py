"""Resumption by replay, lost claims and cancellation, over the real event store."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from chiffon.commands import CancelRun
from chiffon.events import new_event
from chiffon.events.runs import CancelRequested
from chiffon.executor.domain import RunState, decide_cancel
from chiffon.executor.execution import RunExecution
from chiffon.executor.models import ModelReply, ModelRequest
from tests.support.fixtures import eventually

from .graph_support import (  # noqa: F401 — provider: the autouse test server
    LOOP,
    TESTER,
    RunLog,
    ScriptedLlm,
    claim,
    completed,
    execution,
    last,
    provider,
    start,
    types,
)

FIVE = """
name: five
version: 1
defaults: {model: openai/x}
nodes:
  - {id: n1, type: llm, prompt: "one"}
  - {id: n2, type: llm, prompt: "two {n1}"}
  - {id: n3, type: llm, prompt: "three {n2}"}
edges:
  - {from: n1, to: n2}
  - {from: n2, to: n3}
"""


class GatedLlm(ScriptedLlm):
    """Blocks every call whose prompt starts with ``block`` until released."""

    def __init__(self, block: str) -> None:
        super().__init__()
        self.block = block
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, request: ModelRequest) -> ModelReply:
        if request.messages[-1]["content"].startswith(self.block):
            self.entered.set()
            await self.release.wait()
        return await super().complete(request)


async def test_a_resumed_run_never_runs_a_completed_node_again(log: RunLog) -> None:
    workflow, _ = await start(log, FIVE)
    first = GatedLlm("two")
    task = asyncio.ensure_future(execution(log, workflow, await claim(log), first).execute())
    await asyncio.wait_for(first.entered.wait(), 5)
    task.cancel()  # the replica dies in the middle of n2: nothing more is written
    await asyncio.gather(task, return_exceptions=True)
    assert (await types(log))[-1] == "run.node.started"

    second = ScriptedLlm()
    state = await claim(log, executor="executor-2")
    assert state.claims == 2
    assert await execution(log, workflow, state, second).execute() == "succeeded"
    assert [n for n, _ in (await completed(log))] == ["n1", "n2", "n3"]
    assert [p for _m, p in second.calls] == ["two echo: one", "three echo: two echo: one"]
    failed = await last(log, "run.node.failed")
    assert (failed.node_id, failed.attempt, failed.error.type, failed.will_retry) == (
        "n2",
        1,
        "interrupted",
        True,
    )
    assert (await last(log, "run.completed")).outputs["n3"] == "echo: three echo: two echo: one"


async def test_loop_counters_survive_a_crash(log: RunLog) -> None:
    reviews = 0

    def script(_m: str, messages: list[dict[str, str]], schema: Any) -> str | None:
        nonlocal reviews
        if "score" in schema["properties"]:
            reviews += 1
            return json.dumps({"score": 1})
        return None

    workflow, _ = await start(log, LOOP)

    class CrashOnThirdReview(ScriptedLlm):
        async def complete(self, request: ModelRequest) -> ModelReply:
            if request.messages[-1]["content"].startswith("review") and reviews == 2:
                await asyncio.Event().wait()
            return await super().complete(request)

    task = asyncio.ensure_future(
        execution(log, workflow, await claim(log), CrashOnThirdReview(script)).execute()
    )

    async def in_third_review() -> bool:
        # Held in the third review's call: nothing of the run is on its way to the store.
        events = await log.of()
        started = [e for e in events if e.type == "run.node.started"]
        reviews_started = [e for e in started if e.payload.node_id == "review"]
        return len(reviews_started) == 3 and events[-1] is reviews_started[-1]

    await eventually(
        in_third_review, timeout=10, message="the run reached its third review (to crash in)"
    )
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (
        await execution(log, workflow, await claim(log), ScriptedLlm(script)).execute()
        == "succeeded"
    )
    assert [n for n, _ in (await completed(log))] == ["begin"] + ["write", "review"] * 4
    assert reviews == 4  # no review answered twice, and the loop still stopped at 3 iterations


async def test_a_replica_that_lost_its_claim_writes_nothing_more(log: RunLog) -> None:
    workflow, _ = await start(log, FIVE)
    slow = GatedLlm("two")
    task = asyncio.ensure_future(execution(log, workflow, await claim(log), slow).execute())
    await asyncio.wait_for(slow.entered.wait(), 5)
    await claim(log, executor="executor-2")  # presumed dead, taken over
    count = len(await log.of())
    slow.release.set()
    assert await task == "lost"
    assert len(await log.of()) == count


async def held_in_second_call(
    log: RunLog, reason: str
) -> tuple[RunExecution, asyncio.Future[str], list[Any], int]:
    """A run held in its second model call (which waits for ever), and the cancel a user
    would append now with the version it read."""
    workflow, _ = await start(log, FIVE)
    slow = GatedLlm("two")
    running = execution(log, workflow, await claim(log), slow)
    task = asyncio.ensure_future(running.execute())
    await asyncio.wait_for(slow.entered.wait(), 5)
    events, version = await log.store.read_aggregate(log.key)
    state = RunState.from_events(log.run_id, [(e.envelope, e.sequence) for e in events])
    cancel = [
        new_event(p, aggregate_id=log.run_id, actor=TESTER)
        for p in decide_cancel(
            state, CancelRun(actor=TESTER, run_id=log.run_id, reason=reason), datetime.now(UTC)
        )
    ]
    return running, task, cancel, version


async def test_cancel_interrupts_a_call_and_records_the_end(log: RunLog) -> None:
    running, task, cancel, version = await held_in_second_call(log, "changed my mind")
    assert [type(e.payload) for e in cancel] == [CancelRequested]  # held: the holder ends it
    await log.store.append(log.key, cancel, version)
    running.poke()
    assert await asyncio.wait_for(task, 5) == "cancelled"
    assert (await types(log))[-2:] == ["run.cancel_requested", "run.cancelled"]
    assert (await last(log, "run.cancelled")).reason == "changed my mind"
    assert [n for n, _ in (await completed(log))] == ["n1"]


async def test_a_signal_that_arrives_before_its_event_is_stored_is_not_lost(
    log: RunLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replica's signal is the published message itself, which can reach it before
    # JetStream has stored the event: the holder must keep looking for a moment.
    # Held in a call until the cancel is seen: no append would notice it.
    running, task, cancel, version = await held_in_second_call(log, "too slow")
    read_aggregate = log.store.read_aggregate
    looked = asyncio.Event()

    async def read_and_tell(key: Any, *, after: int = 0) -> Any:
        found = await read_aggregate(key, after=after)
        looked.set()
        return found

    monkeypatch.setattr(log.store, "read_aggregate", read_and_tell)
    running.poke(str(cancel[0].event_id))  # the signal first ...
    await asyncio.wait_for(looked.wait(), 5)  # ... its first look finds nothing ...
    await log.store.append(log.key, cancel, version)  # ... then the event is stored
    assert await asyncio.wait_for(task, 5) == "cancelled"
    assert (await types(log))[-2:] == ["run.cancel_requested", "run.cancelled"]


async def test_cancel_is_seen_at_the_next_append_without_a_signal(log: RunLog) -> None:
    workflow, _ = await start(log, FIVE)

    async def script(_m: str, messages: list[dict[str, str]], _s: Any) -> None:
        if messages[-1]["content"] == "one":
            # A user cancels while n1's call is in flight; no signal reaches the run.
            await log.append_outside(CancelRequested(reason="stop"))

    outcome = await execution(log, workflow, await claim(log), ScriptedLlm(script)).execute()
    assert outcome == "cancelled"
    assert [n for n, _ in (await completed(log))] == ["n1"]  # the answer that was paid for is kept
    assert "run.node.started" not in (await types(log))[-3:]


async def test_work_items_are_left_to_a_live_holder(log: RunLog) -> None:
    _, state = await start(log, FIVE)
    assert state.should_execute(1)
    state = dataclasses.replace(state, holder="executor-1", work_seq=1)
    assert state.should_execute(1)  # a redelivery of the holder's own item: take over
    assert not state.should_execute(7)  # another item while held: the holder sees it
