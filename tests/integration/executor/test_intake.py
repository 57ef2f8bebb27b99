"""A replica takes no more runs than it has room for; the others wait for a free slot."""

from __future__ import annotations

import asyncio

from chiffon.cli.direct_client import DirectClient

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
    spawn_executor: Spawn, client: DirectClient
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
