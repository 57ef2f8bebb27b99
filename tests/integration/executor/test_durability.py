"""Durability with real processes: kill -9 mid-node, cancel, approvals across a restart."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from chiffon.cli.http_client import GatewayClient
from tests.integration.gateway.support import Service

from .conftest import ExecutorProcess, client_for, llm_env, start_executor, start_ready
from .helpers import events_until, of_type, run_view
from .openai_server import FakeOpenAI

STEPS = """
name: steps
version: 1
defaults: {model: openai/test-model, timeout: 30s}
nodes:
  - {id: s1, type: llm, prompt: "step s1"}
  - {id: s2, type: llm, prompt: "step s2 after {s1}"}
  - {id: s3, type: llm, prompt: "step s3 after {s2}"}
  - {id: s4, type: llm, prompt: "step s4 after {s3}"}
  - {id: s5, type: llm, prompt: "step s5 after {s4}", output: {score: integer}}
edges:
  - {from: s1, to: s2}
  - {from: s2, to: s3}
  - {from: s3, to: s4}
  - {from: s4, to: s5}
"""
NODES = ["s1", "s2", "s3", "s4", "s5"]


@dataclass
class LlmStack:
    server: FakeOpenAI
    replicas: list[ExecutorProcess]
    env: dict[str, str]


@pytest.fixture(scope="module")
async def llm_stack(
    shared_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LlmStack]:
    """Two replicas (started together) whose provider is the OpenAI-compatible test server."""
    server = await FakeOpenAI().start()
    logs = tmp_path_factory.mktemp("llm-stack")
    env = llm_env(server)
    replicas = [start_executor(shared_env, logs / f"executor-{k}.log", k, env) for k in (1, 2)]
    try:
        await start_ready(*replicas)
        yield LlmStack(server, replicas, shared_env)
    finally:
        for proc in replicas:
            proc.stop(timeout=10)
        await server.stop()


@pytest.fixture
async def stack(
    llm_stack: LlmStack, shared_gateway: Service
) -> AsyncIterator[tuple[LlmStack, GatewayClient, str]]:
    """The stack, a client (through the module's gateway), and a workflow name of this
    test's own."""
    llm_stack.server.delay, llm_stack.server.fail_first = 0.0, 0
    llm_stack.server.requests.clear()
    async with client_for(shared_gateway) as client:
        yield llm_stack, client, f"steps-{uuid.uuid4().hex[:8]}"


async def test_provider_errors_are_retried_by_the_node_policy(
    stack: tuple[LlmStack, GatewayClient, str],
) -> None:
    llm, client, name = stack
    llm.server.fail_first = 1
    source = STEPS.replace("name: steps", f"name: {name}").replace(
        "timeout: 30s}", "timeout: 30s, retry: {attempts: 2, backoff: {initial: 100ms}}}"
    )
    await client.register_workflow(source)
    run_id = (await client.start_run(name, inputs={}))["run_id"]
    events = await events_until(client, run_id)
    assert events[-1].type == "run.completed"
    failed = of_type(events, "run.node.failed")
    assert [(f["node_id"], f["error"]["type"], f["will_retry"]) for f in failed] == [
        ("s1", "provider_error", True)
    ]
    assert "503" in failed[0]["error"]["message"] or "overloaded" in failed[0]["error"]["message"]
    assert llm.server.count("step s1") == 2  # one try each, LiteLLM does not retry on its own


async def test_cancel_interrupts_a_long_call(stack: tuple[LlmStack, GatewayClient, str]) -> None:
    llm, client, name = stack
    llm.server.delay = 20
    await client.register_workflow(STEPS.replace("name: steps", f"name: {name}"))
    run_id = (await client.start_run(name, inputs={}))["run_id"]
    await events_until(client, run_id, lambda e: e.type == "run.node.started")
    result = await client.cancel_run(run_id, reason="wrong input")
    assert result["cancel_requested"] is True
    asked = time.monotonic()
    events = await events_until(client, run_id, timeout=10)
    assert time.monotonic() - asked < 5  # it did not wait for the 20 s call
    assert events[-1].type == "run.cancelled" and events[-1].payload["reason"] == "wrong input"
    assert not of_type(events, "run.node.completed")
    assert (await run_view(client, run_id, "cancelled")).cancel_requested


async def test_kill_9_during_a_node_resumes_on_the_other_replica(
    stack: tuple[LlmStack, GatewayClient, str],
) -> None:
    """Last in this module: it kills one of the module's replicas."""
    llm, client, name = stack
    openai_server, replicas = llm.server, llm.replicas
    openai_server.delay = 0.4
    await client.register_workflow(STEPS.replace("name: steps", f"name: {name}"))
    run_id = (await client.start_run(name, inputs={}))["run_id"]

    def in_s3(event) -> bool:  # type: ignore[no-untyped-def]
        return event.type == "run.node.started" and event.payload["node_id"] == "s3"

    before = await events_until(client, run_id, in_s3, timeout=30)
    holder = of_type(before, "run.claimed")[-1]["executor"]
    victim = next(r for r in replicas if r.name == holder)
    survivor = next(r for r in replicas if r is not victim)
    assert of_type(before, "run.claimed")[-1]["pid"] == victim.pid
    victim.kill()
    killed = time.monotonic()

    events = await events_until(client, run_id, timeout=30)
    assert events[-1].type == "run.completed", events[-1].payload
    claims = of_type(events, "run.claimed")
    assert [(c["executor"], c["resumed"]) for c in claims] == [
        (victim.name, False),
        (survivor.name, True),
    ]
    resumed_at = next(
        e for e in events if e.type == "run.claimed" and e.payload["executor"] == survivor.name
    )
    assert resumed_at.occurred_at.timestamp() - (time.time() - (time.monotonic() - killed)) < 3 + 5

    completions = Counter(p["node_id"] for p in of_type(events, "run.node.completed"))
    assert completions == Counter(NODES)  # exactly one NodeCompleted per node
    for node in ("s1", "s2", "s4", "s5"):
        assert openai_server.count(f"step {node}") == 1, (
            node
        )  # a completed node is never called again
    # s3 was in flight when its replica died: its first call was abandoned, not completed.
    assert openai_server.count("step s3") in (1, 2)
    assert len(openai_server.requests) == len(NODES) + (openai_server.count("step s3") - 1)
    interrupted = [
        p for p in of_type(events, "run.node.failed") if p["error"]["type"] == "interrupted"
    ]
    assert [(p["node_id"], p["attempt"]) for p in interrupted] == [("s3", 1)]

    run = await run_view(client, run_id, "succeeded")
    assert (run.executor, run.pid, run.claims) == (survivor.name, survivor.pid, 2)
    assert [n.node_id for n in run.nodes] == NODES
    assert next(n for n in run.nodes if n.node_id == "s3").attempts == 2
