"""`chiffon up --nats-nodes 3`: a real three-node JetStream cluster under the whole stack.

One stack for the module (starting it is most of the time): the cluster and its R3
streams as `status` and NATS report them; SIGKILL of the node that leads the runs'
stream while runs execute and events are being appended, which loses no acknowledged
event and fails no run; the node started again by `up` catching up; `down` stopping
every node. Real processes on free ports in a temporary CHIFFON_HOME.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from chiffon.cli.http_client import GatewayClient
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import AggregateKey, EventStoreError, JetStreamEventStore
from chiffon.eventstore.provision import create_streams
from tests.integration.devstack.test_devstack_stack import Stack, gone, run_ports, wait_for
from tests.support.fixtures import eventually

pytestmark = pytest.mark.timeout(240)
ACTOR = Actor.service("test")

NODES = 3
RUNS = 4
# Long enough (4 s of sleeps per run) for the kill to land while every run executes,
# even on a loaded machine.
WORKFLOW = """
name: {name}
version: 1
nodes:
  - {{id: first, type: agent, requires: [shell], task: {{tool: shell, command: "sleep 2"}}}}
  - {{id: second, type: agent, requires: [shell], task: {{tool: shell, command: "sleep 2"}}}}
  - {{id: third, type: agent, requires: [shell], task: {{tool: shell, command: "echo done"}}}}
edges:
  - {{from: first, to: second}}
  - {{from: second, to: third}}
"""


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("chiffon-cluster"))
    # Node N listens on <port> + N: three runs of three free ports.
    for name in ("NATS", "NATS_MONITOR", "NATS_CLUSTER"):
        stack.env[f"CHIFFON_{name}_PORT"] = str(run_ports(NODES))
    stack.env["CHIFFON_EXECUTOR_REPLICAS"] = "1"
    try:
        done = stack.run("up", "--nats-nodes", str(NODES), light=True, timeout=200)
        assert done.returncode == 0, f"up failed:\n{done.stdout}\n{done.stderr}"
        yield stack
    finally:
        stack.run("down", light=True)


def nats_entries(stack: Stack) -> list[dict[str, Any]]:
    return [entry for entry in stack.status() if entry["name"] == "nats"]


def nats_url(stack: Stack) -> str:
    return str(json.loads((stack.home / "stack.json").read_text())["nats_url"])


def monitor(stack: Stack, node: int) -> str:
    return f"http://127.0.0.1:{int(stack.env['CHIFFON_NATS_MONITOR_PORT']) + node}"


def stream_state(stack: Stack, node: int, stream: str) -> dict[str, Any] | None:
    """The stream as node ``node`` holds it (its own copy), from its monitoring port."""
    try:
        answer = httpx.get(f"{monitor(stack, node)}/jsz", params={"streams": "true"}, timeout=2)
    except httpx.HTTPError:
        return None
    for account in answer.json().get("account_details", []):
        for found in account.get("stream_detail", []):
            if found["name"] == stream:
                return dict(found)
    return None


def test_up_starts_three_nodes_and_replicates_every_stream(cluster_stack: Stack) -> None:
    entries = nats_entries(cluster_stack)
    assert [e["replica"] for e in entries] == list(range(NODES))
    assert len({e["pid"] for e in entries}) == NODES and all(e["pid"] for e in entries)
    wait_for(lambda: all(e["healthy"] for e in nats_entries(cluster_stack)), 30, "nats healthy")
    url = nats_url(cluster_stack)
    assert url == ",".join(e["url"] for e in entries)
    for node in range(NODES):
        config = (cluster_stack.home / f"nats-{node}" / "nats.conf").read_text()
        assert f'server_name: "chiffon-{node}"' in config and "cluster {" in config

    async def check() -> None:
        async with JetStreamEventStore.connect(url, CATALOG) as store:
            for name in store.streams.all_stream_names():
                info = await store.js.stream_info(name)
                assert info.config.num_replicas == NODES, name
        # Creating the replicated streams again changes nothing and fails nothing.
        await create_streams(url, "chiffon", replicas=NODES)
        # A stream made with one replica is raised to three by the setting...
        namespace = f"grow{uuid.uuid4().hex[:6]}"
        await create_streams(url, namespace, replicas=1)
        await create_streams(url, namespace, replicas=NODES)
        # A process started with the default (one copy) does not strip them again.
        await create_streams(url, namespace, replicas=1)
        async with JetStreamEventStore.connect(url, CATALOG, namespace=namespace) as store:
            for name in store.streams.all_stream_names():
                info = await store.js.stream_info(name)
                assert info.config.num_replicas == NODES, name
            for name in store.streams.all_stream_names():
                await store.js.delete_stream(name)

    asyncio.run(check())


@pytest.fixture
async def gateway(cluster_stack: Stack) -> AsyncIterator[GatewayClient]:
    url = f"http://127.0.0.1:{cluster_stack.env['CHIFFON_GATEWAY_PORT']}"
    client = GatewayClient(url, (cluster_stack.home / "admin-key").read_text().strip())
    try:

        async def local_agent_online() -> bool:
            agent = await client.get_agent("local") or {}
            return agent.get("status") == "online"

        await eventually(local_agent_online, timeout=60, message="the local agent online")
        yield client
    finally:
        await client.close()


async def append_until(
    store: JetStreamEventStore, stop: asyncio.Event, acknowledged: dict[str, int]
) -> None:
    """Append one event at a time, each to a new aggregate, keeping what NATS acked
    (an append that raised was not acknowledged: its caller knows it may be lost)."""
    n = 0
    while not stop.is_set():
        agent_id = f"probe-{n}"
        event = new_event(
            AgentRegistered(name=agent_id, host="h", address="h:1"),
            aggregate_id=agent_id,
            actor=ACTOR,
        )
        with contextlib.suppress(EventStoreError):
            result = await store.append(AggregateKey("agent", agent_id), [event], 0)
            acknowledged[agent_id] = result.sequences[0]
        n += 1


async def leader_of(store: JetStreamEventStore, stream: str) -> str:
    info = await store.js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader
    return str(info.cluster.leader)


async def move_leader(store: JetStreamEventStore, stream: str, to: str) -> None:
    """Make ``to`` the stream's leader (a step-down with a preferred successor)."""

    async def there() -> bool:
        if await leader_of(store, stream) == to:
            return True
        request = json.dumps({"placement": {"preferred": to}}).encode()
        with contextlib.suppress(Exception):  # an election under way: ask again
            await store.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, 5)
        return False

    await eventually(there, timeout=20, message=f"{stream} led by {to}")


async def test_killing_the_runs_leader_loses_no_event_and_fails_no_run(
    cluster_stack: Stack, gateway: GatewayClient
) -> None:
    name = f"cluster-{uuid.uuid4().hex[:8]}"
    await gateway.register_workflow(WORKFLOW.format(name=name))
    url = nats_url(cluster_stack)
    # The probe's events go to a namespace of their own, so no service sees them.
    async with JetStreamEventStore.connect(url, CATALOG, namespace="probe") as store:
        await store.setup(replicas=NODES)
        # The registry's heartbeats live in a key-value bucket: replicated as well, or
        # losing its node would stop them while the events carry on.
        heartbeats = await store.js.stream_info("KV_CHIFFON_AGENT_HEARTBEATS")
        assert heartbeats.config.num_replicas == NODES
        runs_stream = "CHIFFON_RUNS"
        probe_stream = store.streams.stream_name("AGENTS")
        # The worst node to lose: the one leading the runs' stream and the probe's.
        leader = await leader_of(store, runs_stream)
        await move_leader(store, probe_stream, leader)
        victim = int(leader.rsplit("-", 1)[1])
        victim_pid = nats_entries(cluster_stack)[victim]["pid"]

        run_ids = [(await gateway.start_run(name, inputs={}))["run_id"] for _ in range(RUNS)]

        async def some_run_executing() -> bool:
            return any([await status_of(gateway, run_id) == "running" for run_id in run_ids])

        await eventually(some_run_executing, timeout=30, message="a run executing")
        stop, acknowledged = asyncio.Event(), dict[str, int]()
        appending = asyncio.create_task(append_until(store, stop, acknowledged))
        await eventually(lambda: settled(len(acknowledged) > 20), message="appends")
        unfinished = [run for run in run_ids if await status_of(gateway, run) != "succeeded"]
        os.kill(victim_pid, signal.SIGKILL)
        await eventually(lambda: settled(gone(victim_pid)), message="the node dead")
        at_kill = len(acknowledged)
        # Appends go on against the two nodes left, once they have elected a leader.
        await eventually(
            lambda: settled(len(acknowledged) > at_kill + 20),
            timeout=30,
            message="appends after the kill",
        )
        stop.set()
        await asyncio.wait_for(appending, 30)
        assert await leader_of(store, probe_stream) != leader

        # Every acknowledged event is there, once, at the sequence its ack named.
        for agent_id, sequence in acknowledged.items():
            events, _ = await store.read_aggregate(AggregateKey("agent", agent_id))
            assert [e.sequence for e in events] == [sequence], agent_id

        # No run failed: each completes, on a stack that kept serving.
        async def all_succeeded() -> bool:
            statuses = {await status_of(gateway, run_id) for run_id in run_ids}
            assert not statuses & {"failed", "cancelled"}, statuses
            return statuses == {"succeeded"}

        await eventually(all_succeeded, timeout=60, message="every run succeeded")
        assert unfinished, "every run had ended before the kill: nothing was proven"

        # `up` starts the killed node again; it rejoins and catches up.
        done = cluster_stack.run("up", light=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"started nats-{victim}" in done.stdout and done.stdout.count("started ") == 1
        last = (await store.js.stream_info(probe_stream)).state.last_seq

        def caught_up() -> bool:
            state = stream_state(cluster_stack, victim, probe_stream)
            return state is not None and state["state"]["last_seq"] >= last

        wait_for(caught_up, 30, f"nats-{victim} caught up to sequence {last}")
        for name_ in (probe_stream, *store.streams.all_stream_names()):
            with contextlib.suppress(Exception):
                await store.js.delete_stream(name_)


async def status_of(gateway: GatewayClient, run_id: str) -> str | None:
    run = await gateway.get_run(run_id)
    return run.status if run else None


async def settled(value: bool) -> bool:
    return value


def test_down_stops_every_node(cluster_stack: Stack) -> None:
    pids = [entry["pid"] for entry in nats_entries(cluster_stack)]
    done = cluster_stack.run("down", light=True)
    assert done.returncode == 0, done.stderr
    for node in range(NODES):
        assert f"stopped nats-{node}" in done.stdout
    assert all(gone(pid) for pid in pids)
    assert all((cluster_stack.home / f"nats-{n}" / "jetstream").is_dir() for n in range(NODES))
