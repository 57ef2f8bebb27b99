"""A replica takes no more runs than it has room for; the others wait for a free slot."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import nats
from nats.js import api

from chiffon.cli.http_client import GatewayClient
from chiffon.devstack.servers import NatsServer
from chiffon.eventstore.intake import JetStreamWorkIntake
from tests.support.fixtures import eventually

from .conftest import Spawn, llm_env
from .helpers import events_until
from .openai_server import FakeOpenAI

ONE_CALL = """
name: one-call
version: 1
nodes:
  - {id: ask, type: llm, model: openai/test-model, prompt: "question {n}"}
inputs: {n: {type: integer}}
"""


async def test_a_replica_executes_at_most_max_concurrent_runs_at_once(
    spawn_executor: Spawn, client: GatewayClient
) -> None:
    server = await FakeOpenAI(delay=0.3).start()
    try:
        await spawn_executor(1, env={**llm_env(server), "CHIFFON_MAX_CONCURRENT_RUNS": "2"})
        await client.register_workflow(ONE_CALL)
        runs = [(await client.start_run("one-call", inputs={"n": n}))["run_id"] for n in range(8)]
        ends = await asyncio.gather(*(events_until(client, run_id) for run_id in runs))
    finally:
        await server.stop()

    assert [events[-1].type for events in ends] == ["run.completed"] * 8
    assert server.most_in_flight == 2  # each run makes one call: two runs at a time


async def test_items_and_endings_settle_the_pull_request_they_answer(
    nats_server: NatsServer,
) -> None:
    """JetStream serves waiting pull requests in turn, and a 408 ends one of them: the
    count of items still to come must follow each request, or a replica asks for (and
    takes) more runs than it has slots."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"INTAKE_{uuid.uuid4().hex[:8].upper()}"
    try:
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        await js.add_consumer(
            stream, api.ConsumerConfig(durable_name="work", ack_policy=api.AckPolicy.EXPLICIT)
        )
        intake = JetStreamWorkIntake(nc, stream, "work")
        await intake.request(8, expires=1.0)  # ends (408) with items still to come
        await intake.request(4, expires=30.0)
        for n in range(6):
            await js.publish(f"{stream.lower()}.item", str(n).encode())
        taken: list[bytes] = []

        async def all_taken() -> bool:
            while (msg := intake.take()) is not None:
                taken.append(msg.data)
            return len(taken) == 6

        await eventually(all_taken, timeout=10, message="the six items")
        assert intake.outstanding == 6  # 12 asked for, 6 received

        async def first_request_ended() -> bool:
            return intake.outstanding < 6

        await eventually(first_request_ended, timeout=10, message="the 1 s request's end")
        # The second request got every other item (3 of its 4): one is still to come.
        assert intake.outstanding == 1
        await intake.stop()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()
