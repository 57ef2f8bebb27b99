"""Two real agent processes, a real executor and gateway: the agent running a task is
killed (SIGKILL), and the task completes on the other one.

The agents are registered on the AGENTS stream as the registry would register them
(``agent.registered`` events), so this test is about the executor's side only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chiffon.agentproto.auth import generate_keypair
from chiffon.cli.http_client import GatewayClient
from chiffon.devstack.ports import free_port
from chiffon.events import Actor, new_event
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from tests.support.agents import wait_agent_serving

from .conftest import Spawn
from .helpers import events_until, of_type

REGISTRY = Actor.service("registry", 1)

WORKFLOW = """
name: failover
version: 1
nodes:
  - {id: first, type: set, values: {n: "40 + 2"}}
  - id: work
    type: agent
    requires: [shell]
    task: {tool: shell, command: "sleep 2"}
    retry: {attempts: 2, backoff: {initial: 0.1}}
  - {id: after, type: agent, requires: [shell], task: {tool: shell, command: "echo {n}"}}
edges:
  - {from: first, to: work}
  - {from: work, to: after}
"""


@dataclass
class Agent:
    agent_id: str
    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_serving(agent: Agent, timeout: float = 30.0) -> None:
    wait_agent_serving(agent.address, agent.process, agent.log, timeout)


def start_agent(agent_id: str, public_key: Path, tmp_path: Path, **extra: str) -> Agent:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHIFFON_")}
    env.update(
        CHIFFON_AGENT_ID=agent_id,
        CHIFFON_AGENT_NAME=agent_id,
        CHIFFON_AGENT_GRPC_PORT=str(port),
        CHIFFON_PORT=str(free_port()),
        CHIFFON_EXECUTOR_PUBLIC_KEY_FILE=str(public_key),
        CHIFFON_AGENT_SCRATCH_DIR=str(tmp_path / f"scratch-{agent_id}"),
        CHIFFON_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    log = tmp_path / f"{agent_id}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "chiffon.agent"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Agent(agent_id, process, f"127.0.0.1:{port}", log)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = generate_keypair()
    private_file, public_file = tmp_path / "executor-signing.pem", tmp_path / "executor.pub"
    private_file.write_bytes(private)
    private_file.chmod(0o600)
    public_file.write_bytes(public)
    return private_file, public_file


@pytest.fixture
def agents(keys: tuple[Path, Path], tmp_path: Path) -> Iterator[list[Agent]]:
    started = [start_agent(name, keys[1], tmp_path) for name in ("a1", "a2")]
    try:
        for agent in started:
            wait_serving(agent)
        yield started
    finally:
        for agent in started:
            agent.stop()


async def register(store: JetStreamEventStore, agent: Agent) -> None:
    payload = AgentRegistered(
        name=agent.agent_id,
        host="127.0.0.1",
        address=agent.address,
        capabilities=("shell",),
        max_concurrency=4,
    )
    await store.append(
        AggregateKey("agent", agent.agent_id),
        [new_event(payload, aggregate_id=agent.agent_id, actor=REGISTRY)],
    )


async def test_a_killed_agent_task_completes_on_the_other(
    spawn_executor: Spawn,
    client: GatewayClient,
    store: JetStreamEventStore,
    agents: list[Agent],
    keys: tuple[Path, Path],
) -> None:
    first, second = agents
    await register(store, first)  # equal scores: the tie goes to a1
    await register(store, second)
    await spawn_executor(1, env={"CHIFFON_AGENT_SIGNING_KEY_FILE": str(keys[0])})
    await client.register_workflow(WORKFLOW)
    run_id = (await client.start_run("failover", inputs={}))["run_id"]

    events = await events_until(client, run_id, lambda e: e.type == "run.agent_task.assigned")
    assert of_type(events, "run.agent_task.assigned")[0]["agent_id"] == "a1"
    first.kill()  # mid-task: `sleep 2` is running on it

    events = await events_until(client, run_id, timeout=60)
    assert events[-1].type == "run.completed", [e.type for e in events]
    work = [p for p in of_type(events, "run.agent_task.assigned") if p["node_id"] == "work"]
    assert [(p["agent_id"], p["attempt"]) for p in work] == [("a1", 1), ("a2", 2)]
    [failed] = of_type(events, "run.node.failed")
    assert (failed["node_id"], failed["attempt"], failed["will_retry"]) == ("work", 1, True)
    assert failed["error"]["type"] == "interrupted"
    finished = [p for p in of_type(events, "run.agent_task.finished") if p["node_id"] == "work"]
    assert [(p["agent_id"], p["ok"]) for p in finished] == [("a1", False), ("a2", True)]
    assert finished[-1]["cpu_seconds"] is not None and finished[-1]["duration_ms"] >= 1500
    completed = Counter(p["node_id"] for p in of_type(events, "run.node.completed"))
    assert completed == Counter({"first": 1, "work": 1, "after": 1})  # first not re-run
    after = [p for p in of_type(events, "run.agent_task.assigned") if p["node_id"] == "after"]
    assert [p["agent_id"] for p in after] == ["a2"]  # a1 is unreachable from here now
    assert events[-1].payload["outputs"]["after"]["stdout"] == "42\n"


async def test_after_the_executor_dies_its_agent_task_is_attached_to_not_run_again(
    spawn_executor: Spawn,
    client: GatewayClient,
    store: JetStreamEventStore,
    agents: list[Agent],
    keys: tuple[Path, Path],
) -> None:
    first, second = agents
    await register(store, first)
    await register(store, second)
    signing = {"CHIFFON_AGENT_SIGNING_KEY_FILE": str(keys[0])}
    executor = await spawn_executor(1, env=signing)
    await client.register_workflow(WORKFLOW)
    run_id = (await client.start_run("failover", inputs={}))["run_id"]
    events = await events_until(client, run_id, lambda e: e.type == "run.agent_task.assigned")
    [sent] = of_type(events, "run.agent_task.assigned")
    executor.kill()  # the executor dies while `sleep 2` runs on a1
    await spawn_executor(2, env=signing)

    events = await events_until(client, run_id, timeout=60)
    assert events[-1].type == "run.completed", [e.type for e in events]
    work = [p for p in of_type(events, "run.agent_task.assigned") if p["node_id"] == "work"]
    # The second attempt went back to the task the first one sent: one task, one run.
    assert [(p["agent_id"], p["task_id"], p["attempt"]) for p in work] == [
        ("a1", sent["task_id"], 1),
        ("a1", sent["task_id"], 2),
    ]
    assert work[1]["reasons"][0].startswith("attached to task")
    finished = [p for p in of_type(events, "run.agent_task.finished") if p["node_id"] == "work"]
    assert [(p["task_id"], p["ok"]) for p in finished] == [(sent["task_id"], True)]
    [failed] = of_type(events, "run.node.failed")
    assert (failed["attempt"], failed["error"]["type"]) == (1, "interrupted")
