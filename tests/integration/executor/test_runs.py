"""Runs through a real executor process: the examples, read models, commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from chiffon.cli.client import Conflict, InvalidRequest, NotFound
from chiffon.cli.http_client import GatewayClient

from .conftest import ExecutorProcess
from .helpers import events_until, of_type, run_view


async def register(client: GatewayClient, path: Path) -> dict[str, object]:
    return await client.register_workflow(path.read_text())  # noqa: ASYNC240


async def test_linear_example_runs_offline_and_is_projected(
    shared_executor: ExecutorProcess, shared_client: GatewayClient, examples: Path
) -> None:
    client, executor = shared_client, shared_executor
    registered = await register(client, examples / "linear.yaml")
    assert registered["name"] == "linear-brief" and registered["created"] is True
    started = await client.start_run("linear-brief", inputs={"topic": "tides"})
    assert started["status"] == "pending" and started["version"] == 1
    events = await events_until(client, started["run_id"])
    assert [e.type for e in events][-1] == "run.completed"
    claims = of_type(events, "run.claimed")
    assert claims == [
        {"executor": "executor-1", "pid": executor.pid, "resumed": False, "work_seq": events[0].seq}
    ]
    calls = of_type(events, "run.llm.called")
    assert [(c["provider"], c["model"]) for c in calls] == [("chiffon", "chiffon/echo")] * 3
    assert all(c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in calls)

    run = await run_view(client, started["run_id"], "succeeded")
    assert (run.executor, run.pid, run.workflow, run.version) == (
        "executor-1",
        executor.pid,
        "linear-brief",
        1,
    )
    assert [(n.node_id, n.status, n.attempts) for n in run.nodes] == [
        ("research", "succeeded", 1),
        ("outline", "succeeded", 1),
        ("write", "succeeded", 1),
    ]
    assert run.prompt_tokens == sum(c["prompt_tokens"] for c in calls)
    assert run.outputs is not None and run.outputs["brief"].startswith("brief: Write the brief")
    assert run.started_at is not None and run.ended_at is not None and run.duration_ms is not None

    summaries, _cursor = await client.list_runs(workflow="linear-brief", status="succeeded")
    assert started["run_id"] in [s.run_id for s in summaries]
    workflow = await client.get_workflow("linear-brief")
    assert workflow is not None and workflow.source == (examples / "linear.yaml").read_text()


async def test_loop_example(shared_client: GatewayClient, examples: Path) -> None:
    client = shared_client
    await register(client, examples / "review-loop.yaml")
    started = await client.start_run("review-loop", inputs={"topic": "rain"})
    events = await events_until(client, started["run_id"])
    assert events[-1].type == "run.completed"
    reviews = [p for p in of_type(events, "run.node.completed") if p["node_id"] == "review"]
    outputs = events[-1].payload["outputs"]
    assert 1 <= len(reviews) <= 4
    if outputs["verdict"] == "accepted":
        assert reviews[-1]["outputs"]["score"] >= 7
    else:
        assert len(reviews) == 4 and outputs["revision"] == 4


async def test_commands_refuse_clearly(shared_client: GatewayClient, examples: Path) -> None:
    client = shared_client
    source = (examples / "linear.yaml").read_text()
    await client.register_workflow(source)
    again = await client.register_workflow(source)
    assert again["created"] is False
    with pytest.raises(Conflict, match="already registered with different content"):
        await client.register_workflow(source.replace("List 3 facts", "List 4 facts"))
    with pytest.raises(NotFound, match="no workflow named 'nope'"):
        await client.start_run("nope", inputs={})
    with pytest.raises(NotFound, match="has no version 9"):
        await client.start_run("linear-brief", inputs={"topic": "x"}, version=9)
    with pytest.raises(InvalidRequest) as bad:
        await client.start_run("linear-brief", inputs={"topic": 3, "colour": "red"})
    messages = [d["message"] for d in bad.value.details]
    assert any("unknown input 'colour'" in m for m in messages) and any(
        "topic" in m for m in messages
    )

    first = await client.start_run("linear-brief", inputs={"topic": "x"}, idempotency_key="k-1")
    second = await client.start_run("linear-brief", inputs={"topic": "x"}, idempotency_key="k-1")
    assert second["run_id"] == first["run_id"] and second["created"] is False
    with pytest.raises(Conflict, match="idempotency key 'k-1'"):
        await client.start_run("linear-brief", inputs={"topic": "y"}, idempotency_key="k-1")
    await events_until(client, first["run_id"])
    with pytest.raises(Conflict, match="already ended"):
        await client.cancel_run(first["run_id"])
    with pytest.raises(NotFound):
        await client.cancel_run("no-such-run")
    with pytest.raises(Conflict, match="already ended"):
        await client.approve(first["run_id"], "gate")
