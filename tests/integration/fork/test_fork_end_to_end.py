"""``chiffon fork`` and ``POST /v1/runs/{id}/fork`` against a real executor, gateway and
provider stand-in: a fork at the third node of a five-node run calls the provider for
nodes 3-5 only, with the change; refusals are precise and write nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from typer.testing import CliRunner

from chiffon.cli.http_client import GatewayClient
from chiffon.cli.main import app
from chiffon.executor.replay.driver import verify_run
from chiffon.executor.replay.source import RunSource
from chiffon.readmodels.views import RunPublic
from tests.integration.executor.helpers import run_view
from tests.integration.gateway.support import ADMIN_KEY
from tests.support.cli import run_cli

from .conftest import ForkStack

# n6 follows n5 only on an answer the echo never gives: it never starts.
FIVE = """
name: {name}
version: 1
inputs: {{topic: {{type: string}}}}
defaults: {{model: openai/test-model, timeout: 30s}}
nodes:
  - {{id: n1, type: llm, prompt: "step n1 on {{topic}}"}}
  - {{id: n2, type: llm, prompt: "step n2 after {{n1}}"}}
  - {{id: n3, type: llm, prompt: "step n3 after {{n2}}"}}
  - {{id: n4, type: llm, prompt: "step n4 after {{n3}}"}}
  - {{id: n5, type: llm, prompt: "step n5 after {{n4}}"}}
  - {{id: n6, type: llm, prompt: "step n6 after {{n5}}"}}
edges:
  - {{from: n1, to: n2}}
  - {{from: n2, to: n3}}
  - {{from: n3, to: n4}}
  - {{from: n4, to: n5}}
  - {{from: n5, to: n6, when: "n5 == 'never'"}}
"""


@dataclass
class Parent:
    run_id: str
    run: RunPublic


@pytest.fixture(scope="module")
async def parent(fork_stack: ForkStack) -> AsyncIterator[Parent]:
    """A succeeded run of the five-node workflow (n6 never started)."""
    async with GatewayClient(fork_stack.gateway.url, ADMIN_KEY) as client:
        name = f"five-{uuid.uuid4().hex[:8]}"
        await client.register_workflow(FIVE.format(name=name))
        started = await client.start_run(name, inputs={"topic": "forks"})
        run = await run_view(client, started["run_id"], "succeeded", 60)
    yield Parent(started["run_id"], run)


def outputs(run: RunPublic) -> dict[str, object]:
    return {node.node_id: node.outputs for node in run.nodes}


async def test_a_fork_at_the_third_node_calls_the_provider_for_nodes_3_to_5_only(
    fork_stack: ForkStack, parent: Parent
) -> None:
    provider = fork_stack.provider
    provider.requests.clear()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=fork_stack.gateway.url, headers=headers) as http:
        # Two forks at once: n3 on another model (the CLI), n3 with another prompt (REST).
        by_cli, by_rest = await asyncio.gather(
            run_cli(
                fork_stack.cli_env,
                "fork",
                parent.run_id,
                "--at",
                "n3",
                "--model",
                "openai/other-model",
                "--json",
            ),  # fmt: skip
            http.post(
                f"/v1/runs/{parent.run_id}/fork",
                json={"at": "n3", "prompt": "step n3 rethought after {n2}"},
            ),
        )
    code, out, err = by_cli
    assert code == 0, err
    model_id = json.loads(out)["run_id"]
    assert json.loads(out) == {"run_id": model_id}
    assert by_rest.status_code == 202
    prompt_id = by_rest.json()["run_id"]
    assert by_rest.headers["location"] == f"/v1/runs/{prompt_id}"
    assert by_rest.json()["forked_from"] == {"run_id": parent.run_id, "at": "n3"}

    async with GatewayClient(fork_stack.gateway.url, ADMIN_KEY) as client:
        model_fork, prompt_fork = await asyncio.gather(
            run_view(client, model_id, "succeeded", 60),
            run_view(client, prompt_id, "succeeded", 60),
        )
    # The stand-in saw nodes 3-5 of each fork and nothing of nodes 1-2.
    rethought = [r for r in provider.requests if "rethought" in r.prompt]
    other = [r for r in provider.requests if "rethought" not in r.prompt]
    assert [(r.prompt.split(" ")[1], r.model) for r in other] == [
        ("n3", "other-model"),
        ("n4", "test-model"),
        ("n5", "test-model"),
    ]
    assert [(r.prompt.split(" ")[1], r.model) for r in rethought] == [
        ("n3", "test-model"),
        ("n4", "test-model"),
        ("n5", "test-model"),
    ]
    assert rethought[0].prompt.startswith("step n3 rethought after echo: step n2")

    for fork in (model_fork, prompt_fork):
        assert fork.forked_from is not None
        assert (fork.forked_from.run_id, fork.forked_from.at) == (parent.run_id, "n3")
        assert fork.llm_calls == 3 and parent.run.llm_calls == 5
        reused = {n.node_id: n for n in fork.nodes if n.node_id in ("n1", "n2")}
        assert {k: n.outputs for k, n in reused.items()} == {
            k: v for k, v in outputs(parent.run).items() if k in ("n1", "n2")
        }
        assert all(n.model is None and n.status == "succeeded" for n in reused.values())
    # --model: n3 answered by the other model; the echo's words are the same.
    models = {node.node_id: node.model for node in model_fork.nodes}
    assert "other-model" in str(models["n3"]) and "test-model" in str(models["n4"])
    assert outputs(model_fork) == outputs(parent.run)
    # --prompt: n3's answer changed, and every node after it saw the change.
    assert "rethought" in str(outputs(prompt_fork)["n3"])
    assert "rethought" in str(prompt_fork.outputs) and "rethought" not in str(parent.run.outputs)

    # Each fork verifies by replay (its reused completions given, n3-n5 re-driven with
    # the fork's changed spec), asking the provider nothing.
    asked = len(provider.requests)
    source = RunSource(fork_stack.store)
    for fork_id in (model_id, prompt_id):
        record = await source.run(fork_id)
        verdict = await verify_run(record, await source.workflow(record))
        assert verdict.divergence is None, verdict
        assert verdict.nodes == 5
    assert len(provider.requests) == asked


async def test_bad_forks_are_refused_precisely_and_write_nothing(
    fork_stack: ForkStack, parent: Parent
) -> None:
    before = await fork_stack.store.last_sequence("RUNS")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=fork_stack.gateway.url, headers=headers) as http:

        async def fork(body: object, run_id: str = parent.run_id) -> httpx.Response:
            return await http.post(f"/v1/runs/{run_id}/fork", json=body)

        unknown = await fork({"at": "n1"}, run_id=str(uuid.uuid4()))
        assert unknown.status_code == 404
        assert unknown.headers["content-type"].startswith("application/problem+json")
        no_node = await fork({"at": "n9"})
        assert no_node.status_code == 422 and "has no node 'n9'" in no_node.json()["detail"]
        hostile = await fork({"at": "n1'; DROP TABLE runs; --", "model": "x" * 5000})
        assert hostile.status_code == 422
        assert {e["path"] for e in hostile.json()["errors"]} == {"body.at", "body.model"}
        bad_prompt = await fork({"at": "n3", "prompt": "use {nowhere}"})
        assert bad_prompt.status_code == 422
        assert any("nowhere" in e["message"] for e in bad_prompt.json()["errors"])
        bad_input = await fork({"at": "n3", "inputs": {"colour": "red"}})
        assert bad_input.status_code == 422 and "colour" in bad_input.text
        never = await fork({"at": "n6"})
        assert never.status_code == 409 and "never started" in never.json()["detail"]
        async with httpx.AsyncClient(base_url=fork_stack.gateway.url) as stranger:
            anonymous = await stranger.post(f"/v1/runs/{parent.run_id}/fork", json={"at": "n1"})
            assert anonymous.status_code == 401
        assert (await http.get(f"/v1/runs/{parent.run_id}")).status_code == 200  # still serving

    # The CLI says the same to its user (in-process: a second interpreter costs seconds).
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["fork", parent.run_id, "--at", "n6"], env=fork_stack.cli_env
    )
    assert result.exit_code == 5 and "never started" in result.output
    assert await fork_stack.store.last_sequence("RUNS") == before  # nothing written
