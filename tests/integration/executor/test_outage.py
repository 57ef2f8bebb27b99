"""A NATS outage in the middle of a node defers the run; it does not fail it."""

from __future__ import annotations

import json

from chiffon.cli.http_client import GatewayClient
from chiffon.devstack.servers import NatsServer
from tests.integration.gateway.support import Service
from tests.support.fixtures import eventually

from .conftest import ExecutorProcess, Spawn, client_for, llm_env
from .helpers import events_until, of_type
from .openai_server import FakeOpenAI

TWO_CALLS = """
name: two-calls
version: 1
defaults: {model: openai/test-model}
nodes:
  - {id: first, type: llm, prompt: "first"}
  - {id: second, type: llm, prompt: "second after {first}"}
edges:
  - {from: first, to: second}
"""


def logged(proc: ExecutorProcess) -> set[str]:
    events = set()
    for line in proc.log.read_text(errors="replace").splitlines():
        try:
            events.add(json.loads(line).get("event"))
        except ValueError:
            continue
    return events


async def test_a_nats_outage_mid_node_defers_the_run_and_it_completes_after(
    spawn_executor: Spawn,
    client: GatewayClient,
    gateway: Service,
    nats_server: NatsServer,
) -> None:
    provider = await FakeOpenAI(delay=1.0).start()
    try:
        executor = await spawn_executor(1, env=llm_env(provider))
        await client.register_workflow(TWO_CALLS)
        run_id = (await client.start_run("two-calls", inputs={}))["run_id"]
        await events_until(client, run_id, lambda e: e.type == "run.node.started")
        await client.close()

        nats_server.stop()  # the node's call returns into an outage

        async def gave_up() -> bool:
            # The append's own retries end after about 20 s.
            return bool(logged(executor) & {"executor.work_deferred", "run.internal_error"})

        await eventually(gave_up, timeout=90, interval=0.5, message="the append never gave up")
        nats_server.start()

        # A new client, through the same gateway, which rides out the outage.
        async with client_for(gateway) as again:
            events = await events_until(again, run_id, timeout=60)
    finally:
        await provider.stop()

    assert not of_type(events, "run.failed"), of_type(events, "run.failed")
    assert events[-1].type == "run.completed"
    completed = [p["node_id"] for p in of_type(events, "run.node.completed")]
    assert completed == ["first", "second"]
