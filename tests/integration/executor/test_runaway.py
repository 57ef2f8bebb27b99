"""A runaway run on real executor replicas: twenty parallel self-loops on ``set`` nodes.

While it runs, commands are answered and other runs on its replica make progress; a
cancel stops it within a second; left alone it fails with ``step_limit`` after at most
``max_node_executions`` node executions; it keeps its claim, no service's readiness
flaps, and the replica's memory comes back when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from nats.js.errors import NotFoundError

from chiffon.cli.http_client import GatewayClient
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from tests.integration.gateway.support import Service
from tests.support.fixtures import eventually

from .conftest import ExecutorProcess, Spawn

MAX_NODE_EXECUTIONS = 3_000
LOOPS = 20


def runaway_source() -> str:
    nodes = "\n".join(f'  - {{id: s{i}, type: set, values: {{n{i}: "1"}}}}' for i in range(LOOPS))
    edges = "\n".join(
        f"  - {{from: START, to: s{i}}}\n"
        f"  - {{from: s{i}, to: s{i}, when: go}}\n"
        f"  - {{from: s{i}, to: END, when: not go}}"
        for i in range(LOOPS)
    )
    return (
        "name: runaway\nversion: 1\ninputs: {go: {type: boolean, default: true}}\n"
        f"nodes:\n{nodes}\nedges:\n{edges}\n"
    )


THREE_STEPS = """
name: three-steps
version: 1
nodes:
  - {id: a, type: set, values: {x: "1"}}
  - {id: b, type: set, values: {y: "x + 1"}}
  - {id: c, type: set, values: {z: "y + 1"}}
edges:
  - {from: a, to: b}
  - {from: b, to: c}
"""

WAITS = """
name: waits
version: 1
nodes:
  - {id: review, type: approval, message: "ok?"}
"""


def rss_mib(proc: ExecutorProcess) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# Cheap probes (one message or the stream's per-subject counts), not whole-run reads:
# reading a long run's events every few milliseconds would load the machine under test.


async def last_type(store: JetStreamEventStore, run_id: str) -> str | None:
    stream = store.streams.stream_name("RUNS")
    subject = store.streams.aggregate_filter("run", run_id)
    try:
        msg = await store.js.get_msg(stream, subject=subject, direct=True)
    except NotFoundError:
        return None
    return str(msg.subject).split(".", 3)[3]


async def count(store: JetStreamEventStore, run_id: str, event_type: str) -> int:
    stream = store.streams.stream_name("RUNS")
    subject = store.streams.subject("run", run_id, event_type)
    info = await store.js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def ended(store: JetStreamEventStore, run_id: str) -> str | None:
    """The run's ending event type as stored (the read model may lag a little)."""
    last = await last_type(store, run_id)
    return last if last in ("run.completed", "run.failed", "run.cancelled") else None


@contextlib.asynccontextmanager
async def readiness_watch(urls: list[str]) -> AsyncIterator[list[str]]:
    """Polls every ``/readyz`` while the block runs; yields the failures seen."""
    failures: list[str] = []

    async def watch() -> None:
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                for url in urls:
                    try:
                        status = (await http.get(url)).status_code
                    except httpx.HTTPError as error:
                        failures.append(f"{url}: {type(error).__name__}")
                        continue
                    if status != 200:
                        failures.append(f"{url}: {status}")
                await asyncio.sleep(0.1)

    task = asyncio.create_task(watch())
    try:
        yield failures
    finally:
        task.cancel()


async def test_a_runaway_run_is_bounded_stoppable_and_starves_nothing(
    spawn_executor: Spawn,
    client: GatewayClient,
    gateway: Service,
    store: JetStreamEventStore,
) -> None:
    env = {"CHIFFON_MAX_NODE_EXECUTIONS": str(MAX_NODE_EXECUTIONS)}
    first = await spawn_executor(1, env=env)
    for source in (runaway_source(), THREE_STEPS, WAITS):
        await client.register_workflow(source)

    async def three_step_seconds() -> float:
        began = time.monotonic()
        run_id = (await client.start_run("three-steps", inputs={}))["run_id"]
        await eventually(lambda: ended(store, run_id), timeout=30, message="three-steps ended")
        assert await ended(store, run_id) == "run.completed"
        return time.monotonic() - began

    async def idle_run() -> str:
        run_id = (await client.start_run("waits", inputs={}))["run_id"]

        async def suspended() -> bool:
            return await last_type(store, run_id) == "run.suspended"

        await eventually(suspended, timeout=30, message="the waiting run suspended")
        return run_id

    await three_step_seconds()  # the replica compiles the workflow once
    usual = min([await three_step_seconds() for _ in range(3)])
    idle = [await idle_run() for _ in range(3)]
    rss_before = rss_mib(first)
    ready = [f"http://127.0.0.1:{first.port}/readyz", f"{gateway.url}/readyz"]

    # -- on one replica: a runaway, cancelled while commands and another run go on ------
    async with readiness_watch(ready) as not_ready:
        hot = (await client.start_run("runaway", inputs={}))["run_id"]

        async def hot_enough() -> bool:
            return await count(store, hot, "run.node.completed") >= 500

        await eventually(hot_enough, timeout=30, message="the runaway running")
        during = await three_step_seconds()
        assert during < max(5 * usual, 1.0), (usual, during)
        for run_id in idle:  # commands answered while the runaway runs
            began = time.monotonic()
            assert (await client.cancel_run(run_id))["status"] == "cancelled"
            assert time.monotonic() - began < 1.0
        began = time.monotonic()
        await client.cancel_run(hot, reason="runaway")
        await eventually(lambda: ended(store, hot), timeout=10, interval=0.02, message="stopped")
        took = time.monotonic() - began
        assert await ended(store, hot) == "run.cancelled"
        assert took < 1.0, f"the cancel took {took:.2f}s to take effect"
    assert not_ready == []

    # -- on two replicas: a runaway left alone keeps its claim and hits its limit ---------
    second = await spawn_executor(2, env=env)
    rss_second = rss_mib(second)
    ready.append(f"http://127.0.0.1:{second.port}/readyz")
    async with readiness_watch(ready) as not_ready:
        alone = (await client.start_run("runaway", inputs={}))["run_id"]
        await eventually(lambda: ended(store, alone), timeout=120, message="the runaway ended")
        events, _ = await store.read_aggregate(AggregateKey("run", alone))
        failed = events[-1]
        assert failed.type == "run.failed"
        assert failed.payload.error.type == "step_limit"
        executed = sum(e.type == "run.node.completed" for e in events)
        assert MAX_NODE_EXECUTIONS - LOOPS <= executed <= MAX_NODE_EXECUTIONS
        # It kept its claim: the idle replica did not take it over from the busy one.
        assert [e.type for e in events].count("run.claimed") == 1
    assert not_ready == []

    # -- memory comes back: nothing of an ended run is kept ---------------------------
    for proc, before in ((first, rss_before), (second, rss_second)):

        async def settled(proc: ExecutorProcess = proc, before: float = before) -> bool:
            return rss_mib(proc) <= before + 40

        await eventually(
            settled, timeout=20, interval=0.5, message=f"executor-{proc.replica} RSS back"
        )
