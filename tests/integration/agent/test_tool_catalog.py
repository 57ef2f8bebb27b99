"""The catalog tool in a real agent process over gRPC: a paraphrased request answered
with the right playbook, malformed tasks refused precisely while the agent keeps serving,
the model loaded once for many tasks, an edit of the catalog seen by the next task."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from tests.integration.agent.conftest import AgentProcess, start_agent, stop_agent

HOMELAB = Path(__file__).resolve().parents[2] / "fixtures" / "homelab_catalog"


def _stop(agent: AgentProcess) -> None:
    stop_agent(agent)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog") / "homelab"
    shutil.copytree(HOMELAB, root)
    return root


@pytest.fixture(scope="module")
def catalog_agent(
    tmp_path_factory: pytest.TempPathFactory, catalog_dir: Path
) -> Iterator[AgentProcess]:
    home = tmp_path_factory.mktemp("catalog-agent")
    agent = start_agent(
        home,
        CHIFFON_AGENT_CAPABILITIES="shell,catalog",
        CHIFFON_AGENT_CATALOG_DIR=str(catalog_dir),
        XDG_CACHE_HOME=str(home / "cache"),
    )
    yield agent
    _stop(agent)


@pytest.fixture(scope="module")
async def catalog_stub(
    catalog_agent: AgentProcess,
) -> AsyncIterator[agent_pb2_grpc.AgentAsyncStub]:
    async with grpc.aio.insecure_channel(catalog_agent.address) as channel:
        yield agent_pb2_grpc.AgentStub(channel)


async def _task(
    stub: agent_pb2_grpc.AgentAsyncStub,
    agent: AgentProcess,
    tool: str,
    timeout: float = 0.0,
    **arguments: Any,
) -> agent_pb2.TaskResult:
    args = struct_pb2.Struct()
    args.update(arguments)
    request = agent_pb2.ExecuteRequest(
        task_id=f"run-{uuid.uuid4().hex}:find:0:1",
        run_id="run",
        node_id="find",
        attempt=1,
        tool=tool,
        arguments=args,
        timeout_seconds=timeout,
    )
    results = [
        update.result
        async for update in stub.Execute(request, metadata=agent.token(request.task_id), timeout=60)
        if update.WhichOneof("update") == "result"
    ]
    assert len(results) == 1
    return results[0]


def _output(result: agent_pb2.TaskResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output)


async def test_a_paraphrased_request_is_answered_with_the_right_playbook(
    catalog_agent: AgentProcess, catalog_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    result = await _task(
        catalog_stub, catalog_agent, "catalog", query="deploy uptime monitor", limit=3
    )

    assert result.ok, result.error_message
    output = _output(result)
    assert output["best"] == "deploy-uptime-kuma" and output["uncertain"] is False
    assert len(output["matches"]) == 3
    first = output["matches"][0]
    assert set(first) == {"name", "description", "tags", "confidence", "uncertain", "matched_by"}
    assert first["matched_by"] == "meaning" and first["confidence"] >= 0.85
    assert "monitoring" in first["tags"]


async def test_a_name_and_an_unrelated_request(
    catalog_agent: AgentProcess, catalog_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    named = _output(await _task(catalog_stub, catalog_agent, "catalog", query="harden-ssh"))
    assert named["best"] == "harden-ssh" and named["matches"][0]["matched_by"] == "name"

    cake = _output(await _task(catalog_stub, catalog_agent, "catalog", query="bake a cake"))
    assert cake["uncertain"] is True
    assert all(m["uncertain"] and m["confidence"] < 0.85 for m in cake["matches"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "query is missing or not text"),
        ({"query": ""}, "the query is empty"),
        ({"query": 42}, "query is missing or not text"),
        ({"query": "x" * 5000}, "longer than 1000"),
        ({"query": "deploy", "limit": 0}, "limit"),
        ({"query": "deploy", "limit": 2.5}, "limit"),
        ({"query": "deploy", "limit": "lots"}, "limit"),
        ({"query": "deploy", "threshold": 7}, "threshold"),
        ({"query": "deploy", "playbook": "../../etc/passwd"}, "unknown argument"),
    ],
)
async def test_a_malformed_task_is_refused_and_the_agent_keeps_serving(
    catalog_agent: AgentProcess,
    catalog_stub: agent_pb2_grpc.AgentAsyncStub,
    arguments: dict[str, Any],
    message: str,
) -> None:
    refused = await _task(catalog_stub, catalog_agent, "catalog", **arguments)

    assert not refused.ok and refused.error_type == "invalid_arguments"
    assert message in refused.error_message
    after = await _task(catalog_stub, catalog_agent, "catalog", query="block ads", limit=1)
    assert after.ok and _output(after)["best"] == "deploy-pihole"


async def test_a_search_past_the_tasks_time_limit_is_a_timeout_and_the_agent_keeps_serving(
    catalog_agent: AgentProcess, catalog_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    # 1 ms: less than the model needs for one request (about 7 ms) on any machine.
    late = await _task(
        catalog_stub, catalog_agent, "catalog", timeout=0.001, query="nightly database dumps"
    )

    assert not late.ok and late.error_type == "timeout", late
    after = await _task(catalog_stub, catalog_agent, "catalog", query="nightly database dumps")
    assert after.ok and _output(after)["best"] == "backup-postgres"


async def test_a_playbook_added_to_the_catalog_is_found_by_the_next_task(
    catalog_agent: AgentProcess, catalog_stub: agent_pb2_grpc.AgentAsyncStub, catalog_dir: Path
) -> None:
    request = "run a minecraft server for my friends"
    before = _output(await _task(catalog_stub, catalog_agent, "catalog", query=request))
    assert before["uncertain"] is True

    (catalog_dir / "playbooks" / "deploy-minecraft.yml").write_text(
        "# description: Deploy a Minecraft Java server, with nightly world backups\n"
        "# tags: games\n"
        "- name: Minecraft\n  hosts: homelab\n  tasks: []\n"
    )
    after = _output(await _task(catalog_stub, catalog_agent, "catalog", query=request))

    assert after["best"] == "deploy-minecraft" and after["uncertain"] is False


async def test_the_model_is_loaded_once_for_many_tasks(
    catalog_agent: AgentProcess, catalog_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    for query in ("deploy uptime monitor", "nightly database dumps", "vpn for my phone"):
        assert (await _task(catalog_stub, catalog_agent, "catalog", query=query)).ok

    loads = [
        line
        for line in catalog_agent.log.read_text().splitlines()
        if "catalog.model_loaded" in line
    ]
    assert len(loads) == 1, catalog_agent.tail()


async def test_the_vectors_are_kept_in_the_agents_scratch_folder_only(
    catalog_agent: AgentProcess, catalog_stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    assert (await _task(catalog_stub, catalog_agent, "catalog", query="vpn for my phone")).ok

    home = catalog_agent.log.parent
    assert len(list((home / "scratch" / "catalog-vectors").glob("*.npz"))) == 1
    # Nothing under the user's cache folder (onnxruntime's own import writes a device-id
    # file at cache/Microsoft/DeveloperTools there: not ours to move).
    assert not (home / "cache" / "chiffon").exists()


def test_an_agent_offering_catalog_without_a_catalog_folder_refuses_to_start(
    tmp_path: Path,
) -> None:
    with pytest.raises(AssertionError, match="CHIFFON_AGENT_CATALOG_DIR"):
        start_agent(tmp_path, CHIFFON_AGENT_CAPABILITIES="shell,catalog")
