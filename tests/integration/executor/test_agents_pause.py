"""No agent can take a task: the run pauses and holds nothing; an agent started later
with ``chiffon agent start`` (registering with the real registry) resumes it, on an
executor replica started after the pause, and the run completes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chiffon.cli.http_client import GatewayClient
from chiffon.core.settings import ChiffonSettings
from chiffon.devstack.ports import free_port
from chiffon.eventstore import JetStreamEventStore
from tests.integration.gateway.support import Service

from .conftest import Spawn, issue_credential
from .helpers import events_until, of_type, run_view
from .test_agents_failover import Agent, wait_serving
from .test_agents_failover import keys as keys  # noqa: F401 — the fixture
from .test_signals import work_consumer

CHIFFON = Path(sys.executable).with_name("chiffon")

WORKFLOW = """
name: needs-a-desk
version: 1
nodes:
  - id: prepare
    type: set
    values: {ready: "true"}
  - id: work
    type: agent
    requires: [shell]
    labels: {zone: desk}
    task: {tool: shell, command: [echo, done]}
edges:
  - {from: prepare, to: work}
"""


async def test_a_run_without_a_capable_agent_pauses_and_resumes_when_one_starts(
    spawn_executor: Spawn,
    client: GatewayClient,
    client_settings: ChiffonSettings,
    store: JetStreamEventStore,
    service_env: dict[str, str],
    keys: tuple[Path, Path],  # noqa: F811
    registry: Service,
    tmp_path: Path,
) -> None:
    agent: Agent | None = None
    signing = {"CHIFFON_AGENT_SIGNING_KEY_FILE": str(keys[0])}
    try:
        first = await spawn_executor(1, env=signing)
        await client.register_workflow(WORKFLOW)
        run_id = (await client.start_run("needs-a-desk", inputs={}))["run_id"]

        paused = await run_view(client, run_id, "paused", timeout=30)
        assert paused.paused is not None
        assert (paused.paused.reason, paused.paused.node_id) == ("no_capacity", "work")
        assert (paused.paused.requires, paused.paused.labels) == (["shell"], {"zone": "desk"})
        # It holds nothing: its work item is acknowledged, no replica keeps it.
        async with work_consumer(client_settings) as consumer:
            assert (await consumer()).num_ack_pending == 0

        # Every replica that saw the pause goes; a new one starts (as after down and up).
        assert first.stop(timeout=20) == 0
        await spawn_executor(2, env=signing)

        credential = await issue_credential(store, "desk", tmp_path)
        port = free_port()
        log = tmp_path / "desk.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(CHIFFON),
                    "agent",
                    "start",
                    "--name",
                    "desk",
                    "--capabilities",
                    "shell",
                    "--label",
                    "zone=desk",
                    "--registry",
                    registry.url,
                    "--credential",
                    str(credential),
                    "--executor-key",
                    str(keys[1]),
                    "--port",
                    str(port),
                ],  # fmt: skip
                env={**service_env, "CHIFFON_PORT": str(free_port())},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        agent = Agent("desk", process, f"127.0.0.1:{port}", log)
        wait_serving(agent)

        events = await events_until(client, run_id, timeout=60)
        types = [e.type for e in events]
        assert types[-1] == "run.completed", types
        assert types.count("run.paused") == 1 and types.count("run.resumed") == 1
        [resumed] = [e for e in events if e.type == "run.resumed"]
        assert resumed.actor.startswith("service:executor")  # no human resumed it
        assert [p["node_id"] for p in of_type(events, "run.node.completed")] == [
            "prepare",
            "work",
        ]  # the node before the pause ran once
        [finished] = of_type(events, "run.agent_task.finished")
        assert finished["ok"] is True
        run = await run_view(client, run_id, "succeeded", timeout=30)
        assert run.paused is None
    finally:
        if agent is not None:
            agent.stop()
