"""Resumption by replay, lost claims and cancellation, over an in-memory event log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from chiffon.events import new_event
from chiffon.events.runs import CancelRequested
from chiffon.eventstore import AggregateKey
from chiffon.executor.domain import RunState, decide_cancel

from .fakes import TESTER, MemoryStore, ScriptedLlm, claim, completed, execution, last, start, types

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

    async def complete(self, model: str, messages: list[dict[str, str]], **kwargs: Any):  # type: ignore[no-untyped-def]
        if messages[-1]["content"].startswith(self.block):
            self.entered.set()
            await self.release.wait()
        return await super().complete(model, messages, **kwargs)


async def test_a_resumed_run_never_runs_a_completed_node_again() -> None:
    store = MemoryStore()
    workflow, _ = start(store, FIVE)
    first = GatedLlm("two")
    task = asyncio.ensure_future(execution(store, workflow, await claim(store), first).execute())
    await asyncio.wait_for(first.entered.wait(), 5)
    task.cancel()  # the replica dies in the middle of n2: nothing more is written
    await asyncio.gather(task, return_exceptions=True)
    assert types(store)[-1] == "run.node.started"

    second = ScriptedLlm()
    state = await claim(store, executor="executor-2")
    assert state.claims == 2
    assert await execution(store, workflow, state, second).execute() == "succeeded"
    assert [n for n, _ in completed(store)] == ["n1", "n2", "n3"]
    assert [p for _m, p in second.calls] == ["two echo: one", "three echo: two echo: one"]
    failed = last(store, "run.node.failed")
    assert (failed.node_id, failed.attempt, failed.error.type, failed.will_retry) == (
        "n2",
        1,
        "interrupted",
        True,
    )
    assert last(store, "run.completed").outputs["n3"] == "echo: three echo: two echo: one"


LOOP = """
name: loop
version: 1
defaults: {model: openai/x}
nodes:
  - {id: begin, type: set, values: {score: "0"}}
  - {id: write, type: llm, prompt: "draft after {score}", output: {draft: string}}
  - {id: review, type: llm, prompt: "review {draft}", output: {score: integer}}
edges:
  - {from: begin, to: write}
  - {from: write, to: review}
  - {from: review, to: write, when: "score < 7", max_iterations: 3}
"""


async def test_loop_counters_survive_a_crash() -> None:
    reviews = 0

    def script(_m: str, messages: list[dict[str, str]], schema: Any) -> str | None:
        nonlocal reviews
        if "score" in schema["properties"]:
            reviews += 1
            return json.dumps({"score": 1})
        return None

    store = MemoryStore()
    workflow, _ = start(store, LOOP)

    class CrashOnThirdReview(ScriptedLlm):
        async def complete(self, model, messages, **kw):  # type: ignore[no-untyped-def]
            if messages[-1]["content"].startswith("review") and reviews == 2:
                await asyncio.Event().wait()
            return await super().complete(model, messages, **kw)

    task = asyncio.ensure_future(
        execution(store, workflow, await claim(store), CrashOnThirdReview(script)).execute()
    )
    for _ in range(200):
        await asyncio.sleep(0.005)
        if reviews == 2 and types(store)[-1] == "run.node.started":
            break
    else:
        raise AssertionError("the run never reached its third review: nothing to crash in")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (
        await execution(store, workflow, await claim(store), ScriptedLlm(script)).execute()
        == "succeeded"
    )
    assert [n for n, _ in completed(store)] == ["begin"] + ["write", "review"] * 4
    assert reviews == 4  # no review answered twice, and the loop still stopped at 3 iterations


async def test_a_replica_that_lost_its_claim_writes_nothing_more() -> None:
    store = MemoryStore()
    workflow, _ = start(store, FIVE)
    slow = GatedLlm("two")
    task = asyncio.ensure_future(execution(store, workflow, await claim(store), slow).execute())
    await asyncio.wait_for(slow.entered.wait(), 5)
    await claim(store, executor="executor-2")  # presumed dead, taken over
    count = len(store.events)
    slow.release.set()
    assert await task == "lost"
    assert len(store.events) == count


async def test_cancel_interrupts_a_call_and_records_the_end() -> None:
    store = MemoryStore()
    workflow, _ = start(store, FIVE)
    slow = GatedLlm("two")
    running = execution(store, workflow, await claim(store), slow)
    task = asyncio.ensure_future(running.execute())
    await asyncio.wait_for(slow.entered.wait(), 5)
    events, version = await store.read_aggregate(AggregateKey("run", "run1"))
    state = RunState.from_events("run1", [(e.envelope, e.sequence) for e in events])
    payloads = decide_cancel(state, "changed my mind")
    assert [type(p) for p in payloads] == [CancelRequested]  # held: the holder ends it
    await store.append(
        AggregateKey("run", "run1"),
        [new_event(p, aggregate_id="run1", actor=TESTER) for p in payloads],
        version,
    )
    running.poke()
    assert await asyncio.wait_for(task, 5) == "cancelled"
    assert types(store)[-2:] == ["run.cancel_requested", "run.cancelled"]
    assert last(store, "run.cancelled").reason == "changed my mind"
    assert [n for n, _ in completed(store)] == ["n1"]


async def test_cancel_is_seen_at_the_next_append_without_a_signal() -> None:
    store = MemoryStore()
    workflow, _ = start(store, FIVE)

    def script(_m: str, messages: list[dict[str, str]], _s: Any) -> None:
        if messages[-1]["content"] == "one":
            store.events.append(
                store.events[0].__class__(
                    envelope=new_event(
                        CancelRequested(reason="stop"), aggregate_id="run1", actor=TESTER
                    ),
                    stream="RUNS",
                    sequence=len(store.events) + 1,
                    subject="x",
                )
            )
        return None

    outcome = await execution(store, workflow, await claim(store), ScriptedLlm(script)).execute()
    assert outcome == "cancelled"
    assert [n for n, _ in completed(store)] == ["n1"]  # the answer that was paid for is kept
    assert "run.node.started" not in types(store)[-3:]


def test_work_items_are_left_to_a_live_holder() -> None:
    store = MemoryStore()
    start(store, FIVE)
    state = RunState.from_events("run1", [(e.envelope, e.sequence) for e in store.events])
    assert state.should_execute(1)
    state.holder, state.work_seq = "executor-1", 1
    assert state.should_execute(1)  # a redelivery of the holder's own item: take over
    assert not state.should_execute(7)  # another item while held: the holder sees it
