"""The whole way: an agent started after the run, registering with the real registry
(its credential issued by an admin), is found by the executor, which sends it the task
the run was waiting for (the node's ``capacity_timeout``)."""

from __future__ import annotations

from pathlib import Path

from chiffon.cli.http_client import GatewayClient
from chiffon.eventstore import JetStreamEventStore
from tests.integration.gateway.support import Service

from .conftest import Spawn, issue_credential
from .helpers import events_until, of_type
from .test_agents_failover import keys as keys  # noqa: F401 — the fixture
from .test_agents_failover import start_agent, wait_serving

WORKFLOW = """
name: waits-for-an-agent
version: 1
nodes:
  - id: work
    type: agent
    requires: [shell]
    labels: {zone: desk}
    capacity_timeout: 90s
    task: {tool: shell, command: [echo, "hello; rm -rf /"]}
"""


async def test_an_agent_registered_later_takes_the_waiting_task(
    spawn_executor: Spawn,
    client: GatewayClient,
    store: JetStreamEventStore,
    keys: tuple[Path, Path],  # noqa: F811
    registry: Service,
    tmp_path: Path,
) -> None:
    agent = None
    try:
        await spawn_executor(1, env={"CHIFFON_AGENT_SIGNING_KEY_FILE": str(keys[0])})
        await client.register_workflow(WORKFLOW)
        run_id = (await client.start_run("waits-for-an-agent", inputs={}))["run_id"]
        await events_until(client, run_id, lambda e: e.type == "run.node.started")

        credential = await issue_credential(store, "desk", tmp_path)
        agent = start_agent(
            "desk-1",
            keys[1],
            tmp_path,
            CHIFFON_AGENT_NAME="desk",
            CHIFFON_AGENT_LABELS="zone=desk",
            CHIFFON_REGISTRY_URL=registry.url,
            CHIFFON_AGENT_CREDENTIAL_FILE=str(credential),
        )
        wait_serving(agent)

        events = await events_until(client, run_id, timeout=60)
        assert events[-1].type == "run.completed", [e.type for e in events]
        [assigned] = of_type(events, "run.agent_task.assigned")
        assert (assigned["agent_id"], assigned["agent_name"]) == ("desk-1", "desk")
        assert assigned["address"] == agent.address
        assert "labels zone=desk" in assigned["reasons"][0]
        [finished] = of_type(events, "run.agent_task.finished")
        assert finished["ok"] is True and finished["agent_id"] == "desk-1"
        # An argument is passed as it is, never interpreted by a shell.
        assert events[-1].payload["outputs"]["work"]["stdout"] == "hello; rm -rf /\n"
    finally:
        if agent is not None:
            agent.stop()
