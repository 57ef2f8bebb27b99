"""Signals reach a run however many of its work items the replica has handled."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from chiffon.cli.http_client import GatewayClient
from chiffon.core.settings import ChiffonSettings
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from tests.support.fixtures import eventually

from .conftest import Spawn, llm_env
from .helpers import events_until, of_type
from .openai_server import FakeOpenAI


@contextlib.asynccontextmanager
async def work_consumer(settings: ChiffonSettings) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """Reads the executors' shared work consumer's state (pending, acks, redeliveries)."""
    async with JetStreamEventStore.connect(
        settings.nats_url, CATALOG, namespace=settings.namespace
    ) as store:
        stream = store.streams.stream_name("RUNS")
        yield lambda: store.js.consumer_info(stream, "executor")


# Two branches from the start: a long model call, and an approval decided meanwhile.
BRANCHES = """
name: branches
version: 1
defaults: {model: openai/test-model, timeout: 60s}
nodes:
  - {id: research, type: llm, prompt: "research"}
  - {id: go, type: approval, message: "go?"}
"""


async def test_a_cancel_after_a_decision_still_interrupts_the_running_call(
    spawn_executor: Spawn, client: GatewayClient, client_settings: ChiffonSettings
) -> None:
    provider = await FakeOpenAI(delay=30).start()
    try:
        await spawn_executor(1, env=llm_env(provider))
        await client.register_workflow(BRANCHES)
        run_id = (await client.start_run("branches", inputs={}))["run_id"]

        async def both_waiting() -> bool:
            return len(provider.requests) == 1 and bool(
                of_type(
                    await events_until(client, run_id, lambda e: e.type.startswith("run.approval")),
                    "run.approval.requested",
                )
            )

        await eventually(both_waiting, timeout=20, message="the call and the approval")
        await client.approve(run_id, "go", comment="fine")
        # The decision is a work item too; the replica that holds the run handles it
        # (and acknowledges it) while the call goes on.
        async with work_consumer(client_settings) as consumer_info:

            async def decision_handled() -> bool:
                info = await consumer_info()
                return info.num_pending == 0 and info.num_ack_pending == 1  # the run's own

            await eventually(decision_handled, timeout=20, message="the decision's work item")

        await client.cancel_run(run_id, reason="changed my mind")
        asked = time.monotonic()
        events = await events_until(client, run_id, timeout=20)
        waited = time.monotonic() - asked
    finally:
        await provider.stop()

    assert events[-1].type == "run.cancelled"
    assert waited < 10, f"the cancel waited {waited:.1f} s for the 30 s call"
    assert not [p for p in of_type(events, "run.node.completed") if p["node_id"] == "research"]


ONE_CALL = """
name: one-call
version: 1
nodes:
  - {id: ask, type: llm, model: openai/test-model, prompt: "question"}
"""


async def test_a_replica_that_stalls_past_ack_wait_keeps_its_run_and_calls_once(
    spawn_executor: Spawn, client: GatewayClient, client_settings: ChiffonSettings
) -> None:
    """A stalled replica (here SIGSTOP) misses its progress signals, and JetStream hands
    the item out again, to this same replica once it runs on: it is the run it holds."""
    provider = await FakeOpenAI(delay=8).start()
    try:
        replica = await spawn_executor(
            1, env={**llm_env(provider), "CHIFFON_ACK_WAIT_SECONDS": "1"}
        )
        await client.register_workflow(ONE_CALL)
        run_id = (await client.start_run("one-call", inputs={}))["run_id"]

        async def calling() -> bool:
            return len(provider.requests) == 1

        await eventually(calling, timeout=20, message="the model call")
        async with work_consumer(client_settings) as consumer_info:

            async def redelivered() -> bool:
                return (await consumer_info()).num_redelivered >= 1

            os.kill(replica.pid, signal.SIGSTOP)
            try:
                await eventually(redelivered, timeout=20, message="the item handed out again")
            finally:
                os.kill(replica.pid, signal.SIGCONT)
        events = await events_until(client, run_id, timeout=30)
    finally:
        await provider.stop()

    assert events[-1].type == "run.completed"
    assert len(of_type(events, "run.claimed")) == 1
    assert len(provider.requests) == 1
