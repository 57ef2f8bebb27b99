"""An agent task's output lines reach the run's SSE stream live: a real executor process,
a real agent process running a script that prints three lines with pauses between them,
and a real gateway. A follower asking for ``?output=true`` sees each line as an
``event: output`` message (no ``id:``) before the node's completion; the stored events
hold no line of it (the result has the full output), and a follower that did not ask
sees nothing new."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx

from chiffon.agentproto.v1 import agent_pb2
from chiffon.cli.client import RunEvent
from chiffon.cli.http_client import GatewayClient
from chiffon.events import CATALOG
from chiffon.eventstore import InMemoryEventStore, JetStreamEventStore
from chiffon.executor.nodes.agent import LIVE_LINE_BYTES, LIVE_LINES_PER_SECOND, LiveOutput
from tests.integration.gateway.support import ADMIN_KEY, Service, SseEvent, sse_events
from tests.support.fixtures import eventually

from .conftest import Spawn
from .test_agents_failover import Agent, register, start_agent, wait_serving
from .test_agents_failover import keys as keys  # noqa: F401 — the fixture

WORKFLOW = """
name: prints-over-time
version: 1
nodes:
  - {id: go, type: approval, message: "Start printing?"}
  - id: ticker
    type: agent
    requires: [shell]
    task: {tool: shell, command: ["SCRIPT"]}
edges:
  - {from: go, to: ticker}
"""

SCRIPT = """#!/bin/sh
echo one
sleep 0.3
echo two >&2
sleep 0.3
echo three
"""


async def test_output_lines_reach_the_sse_stream_before_the_node_completes(
    spawn_executor: Spawn,
    client: GatewayClient,
    gateway: Service,
    store: JetStreamEventStore,
    keys: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    script = tmp_path / "ticker.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    agent: Agent | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        agent = start_agent("printer", keys[1], tmp_path, CHIFFON_AGENT_ALLOW=f"echo,{script}")
        wait_serving(agent)
        await register(store, agent)
        await spawn_executor(1, env={"CHIFFON_AGENT_SIGNING_KEY_FILE": str(keys[0])})
        await client.register_workflow(WORKFLOW.replace("SCRIPT", str(script)))
        run_id = (await client.start_run("prints-over-time", inputs={}))["run_id"]

        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with_output: list[SseEvent] = []
        without: list[SseEvent] = []
        async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as http:

            async def follow(url: str, seen: list[SseEvent]) -> None:
                async for event in sse_events(http, url):
                    seen.append(event)

            events = f"/v1/runs/{run_id}/events"
            by_cli: list[RunEvent] = []  # what `chiffon runs follow` reads

            async def follow_as_the_cli() -> None:
                async for event in client.follow_run_events(run_id, output=True):
                    by_cli.append(event)

            tasks = [
                asyncio.create_task(follow(f"{events}?output=true", with_output)),
                asyncio.create_task(follow(events, without)),
                asyncio.create_task(follow_as_the_cli()),
            ]

            async def both_waiting() -> bool:
                return all(
                    any(e.event == "run.approval.requested" for e in seen)
                    for seen in (with_output, without)
                ) and any(e.type == "run.approval.requested" for e in by_cli)

            # Both follow the run live before the task starts printing.
            await eventually(both_waiting, timeout=30, message="the approval on both streams")
            await client.approve(run_id, "go")
            await asyncio.wait_for(asyncio.gather(*tasks), 60)  # each ends after the run's end

            history = [e async for e in sse_events(http, f"{events}?follow=false")]

        assert with_output[-1].event == "run.completed", [e.event for e in with_output]
        outputs = [e for e in with_output if e.event == "output"]
        task_id = f"{run_id}:ticker:1:1"
        assert [(e.data["stream"], e.data["text"], e.data["seq"]) for e in outputs] == [
            ("stdout", "one", 1),
            ("stderr", "two", 2),
            ("stdout", "three", 3),
        ]
        assert all(
            (e.id, e.data["node_id"], e.data["attempt"], e.data["task_id"])
            == (0, "ticker", 1, task_id)
            for e in outputs
        )
        # Live: every line before the task's result was recorded and the node completed.
        kinds = [e.event for e in with_output]
        finished = kinds.index("run.agent_task.finished")
        completed = next(
            i
            for i, e in enumerate(with_output)
            if e.event == "run.node.completed" and e.data["payload"]["node_id"] == "ticker"
        )
        assert max(with_output.index(e) for e in outputs) < finished < completed
        # The lines are not stored: the history and the follower that did not ask have none,
        # and the stored result holds the full output.
        assert [e.event for e in without] == [e.event for e in history]
        assert "output" not in [e.event for e in history]
        assert [e.event for e in with_output if e.event != "output"] == [e.event for e in history]
        assert with_output[completed].data["payload"]["outputs"]["ticker"]["stdout"] == (
            "one\nthree\n"
        )
        # The CLI's client shows the same lines, between the same stored events.
        assert [e.payload["text"] for e in by_cli if e.type == "output"] == ["one", "two", "three"]
        assert [e.type for e in by_cli if e.type != "output"] == [e.event for e in history]
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if agent is not None:
            agent.stop()


async def test_live_lines_are_batched_truncated_and_capped_per_second() -> None:
    store = InMemoryEventStore(CATALOG, namespace="unit")
    heard: list[dict[str, object]] = []

    async def on_message(_subject: str, data: bytes) -> None:
        heard.append(json.loads(data))

    subscription = await store.listen(["unit.live.run.r1.output"], on_message)
    request = agent_pb2.ExecuteRequest(task_id="r1:n:1:2", node_id="n", attempt=2)
    live = LiveOutput(store, "r1", request)
    try:
        live.line("stdout", "x" * (LIVE_LINE_BYTES + 100))
        for n in range(LIVE_LINES_PER_SECOND + 50):  # within one second: 50 too many
            live.line("stderr", f"line {n}")
        await live.close()  # what is pending goes out before the result is recorded

        async def all_heard() -> bool:
            return len(heard) == LIVE_LINES_PER_SECOND

        await eventually(all_heard, timeout=5, message="the forwarded lines")
    finally:
        await subscription.unsubscribe()
    first = heard[0]
    assert (first["node_id"], first["attempt"], first["task_id"], first["seq"]) == (
        "n",
        2,
        "r1:n:1:2",
        1,
    )
    assert str(first["text"]).endswith("… (truncated)")
    assert len(str(first["text"]).encode()) <= LIVE_LINE_BYTES + len("… (truncated)".encode())
    # The rest of the second's lines are skipped; seq still counts them.
    assert [m["seq"] for m in heard] == list(range(1, LIVE_LINES_PER_SECOND + 1))
    live.line("stdout", "later")
    await live.close()
    assert live.seq == LIVE_LINES_PER_SECOND + 52
