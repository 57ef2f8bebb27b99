"""The homelab example on a fresh `chiffon up` (the dev stack on free ports): its local agent
serves examples/homelab/catalog, the workflow finds the playbook for "deploy uptime-kuma",
waits for approval, runs it against localhost with its lines on the run's SSE stream while
the play runs, and a run of the broken variant fails with grouped lint advice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chiffon.cli.http_client import GatewayClient
from tests.integration.devstack.test_devstack_stack import ROOT, Stack
from tests.integration.gateway.support import SseEvent, sse_events
from tests.support.fixtures import eventually

pytestmark = pytest.mark.timeout(420)

WORKFLOW = ROOT / "examples" / "homelab" / "deploy.yaml"


@dataclass
class Gateway:
    client: GatewayClient
    headers: dict[str, str]


@pytest.fixture
async def gateway(stack: Stack) -> AsyncIterator[Gateway]:
    url = f"http://127.0.0.1:{stack.env['CHIFFON_GATEWAY_PORT']}"
    key = (stack.home / "admin-key").read_text().strip()
    client = GatewayClient(url, key)
    try:
        await client.register_workflow(WORKFLOW.read_text())

        async def local_agent_offers_ansible() -> bool:
            agent = await client.get_agent("local") or {}
            return {"ansible", "catalog"} <= set(agent.get("capabilities", []))

        await eventually(local_agent_offers_ansible, timeout=60, message="the local agent")
        yield Gateway(client, {"Authorization": f"Bearer {key}"})
    finally:
        await client.close()


async def _run(
    gateway: Gateway, inputs: dict[str, Any], expect_plan: str
) -> tuple[str, list[SseEvent]]:
    """Start the workflow, approve its plan once it names `expect_plan`, and follow the
    run's events (with output lines) to its end."""
    client = gateway.client
    run_id = (await client.start_run("homelab-deploy", inputs=inputs))["run_id"]
    seen: list[SseEvent] = []
    async with httpx.AsyncClient(base_url=client.url, headers=gateway.headers) as http:

        async def follow() -> None:
            async for event in sse_events(http, f"/v1/runs/{run_id}/events?output=true"):
                seen.append(event)

        following = asyncio.create_task(follow())

        async def plan() -> str | None:
            asked = [e for e in seen if e.event == "run.approval.requested"]
            return asked[0].data["payload"]["message"] if asked else None

        message = await eventually(plan, timeout=120, message="the plan to approve")
        assert message is not None
        assert f"Run the playbook {expect_plan} on localhost" in message
        await client.approve(run_id, "approve_plan")
        await asyncio.wait_for(following, 240)
    return run_id, seen


async def test_deploy_uptime_kuma_streams_the_play_and_writes_only_under_service_root(
    gateway: Gateway, tmp_path: Path
) -> None:
    root = tmp_path / "services"
    root.mkdir()
    _, seen = await _run(
        gateway,
        {"request": "deploy uptime-kuma", "service_root": str(root)},
        expect_plan="deploy-uptime-kuma",
    )

    assert seen[-1].event == "run.completed", seen[-1].data["payload"]
    outputs = seen[-1].data["payload"]["outputs"]
    assert outputs["chosen"] == "deploy-uptime-kuma" and outputs["uncertain"] is False
    assert outputs["status"] == "successful"
    assert outputs["hosts"] == {
        "localhost": {"ok": 4, "changed": 3, "failed": 0, "unreachable": 0, "skipped": 0}
    }
    # The play's lines reached the stream before the task's result was recorded.
    lines = [e for e in seen if e.event == "output" and e.data["node_id"] == "deploy"]
    texts = [e.data["text"] for e in lines]
    assert "TASK [Write the compose file] " + "*" * 50 in "\n".join(texts)
    finished = next(
        i
        for i, e in enumerate(seen)
        if e.event == "run.agent_task.finished" and e.data["payload"]["node_id"] == "deploy"
    )
    assert max(seen.index(e) for e in lines) < finished
    # Written under service_root, nothing else.
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "uptime-kuma",
        "uptime-kuma/compose.yaml",
        "uptime-kuma/data",
        "uptime-kuma/service.env",
    ]
    assert "image: louislam/uptime-kuma:1" in (root / "uptime-kuma" / "compose.yaml").read_text()


async def test_the_broken_variant_fails_with_grouped_lint_advice(
    gateway: Gateway, tmp_path: Path
) -> None:
    _, seen = await _run(
        gateway,
        {
            "request": "deploy uptime-kuma",
            "service_root": str(tmp_path),
            "playbook": "deploy-uptime-kuma-broken",
        },
        expect_plan="deploy-uptime-kuma-broken",
    )

    assert seen[-1].event == "run.failed", seen[-1].data["payload"]
    error = seen[-1].data["payload"]["error"]
    assert error["type"] == "playbook_failed" and error["node_id"] == "deploy"
    assert "task 'start the service' on localhost" in error["message"]
    assert "lint advice" in error["message"]
    for group in ("error handling: ignore-errors", "idempotency: no-changed-when"):
        assert group in error["message"]
    # Not retried: one attempt.
    failed = [e for e in seen if e.event == "run.node.failed"]
    assert [e.data["payload"]["will_retry"] for e in failed] == [False]
