"""The CLI through the gateway: keys, runs, and ``runs logs --follow`` resuming after
the gateway it followed died."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from chiffon.cli.http_client import GatewayClient
from chiffon.devstack.ports import free_port
from tests.support.cli import run_cli

from .conftest import Stack, client
from .support import ADMIN_KEY, EXAMPLES, gateway_env, start_service, wait_ready
from .test_api import start, until_status


async def chiffon(
    stack: Stack,
    cwd: Path,
    *args: str,
    key: str = ADMIN_KEY,
    url: str | None = None,
    timeout: float = 60,
) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(CHIFFON_GATEWAY_URL=url or stack.gateway.url, CHIFFON_API_KEY=key)
    return await run_cli(env, *args, cwd=cwd, timeout=timeout)


async def test_keys_commands(stack: Stack, tmp_path: Path) -> None:
    code, out, err = await chiffon(
        stack, tmp_path, "keys", "create", "--role", "operator", "--name", "from-cli", "--json"
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["role"] == "operator" and created["key"].startswith("chf_")
    code, out, _ = await chiffon(stack, tmp_path, "keys", "list")
    assert code == 0 and created["id"] in out and "from-cli" in out and created["key"] not in out
    # The new key works for what its role allows, and not beyond.
    code, _, err = await chiffon(stack, tmp_path, "keys", "list", key=created["key"])
    assert code != 0 and "admin" in err
    code, out, err = await chiffon(
        stack, tmp_path, "keys", "revoke", created["id"], "--reason", "test"
    )
    assert code == 0, err
    code, _, err = await chiffon(stack, tmp_path, "runs", "list", key=created["key"])
    assert code != 0 and "revoked" in err
    code, _, err = await chiffon(stack, tmp_path, "keys", "create", "--role", "root", "--name", "x")
    assert code == 2 and "unknown role" in err


async def test_run_and_logs_through_the_gateway(stack: Stack, tmp_path: Path) -> None:
    code, out, err = await chiffon(
        stack, tmp_path, "run", str(EXAMPLES / "linear.yaml"), "-i", "topic=otters", "--follow"
    )
    assert code == 0, out + err
    assert "succeeded" in out
    run_id = out.split()[1].rstrip(":")
    code, out, err = await chiffon(stack, tmp_path, "runs", "logs", run_id)
    assert code == 0, err
    assert "research" in out and "succeeded" in out
    code, out, err = await chiffon(stack, tmp_path, "runs", "logs", run_id, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["type"] == "run.requested" and lines[-1]["type"] == "run.completed"
    assert [x["seq"] for x in lines] == sorted(x["seq"] for x in lines)
    code, out, err = await chiffon(stack, tmp_path, "runs", "show", run_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "succeeded"
    code, _, err = await chiffon(stack, tmp_path, "runs", "logs", "no-such-run")
    assert code == 4, err


async def test_logs_follow_resumes_after_the_gateway_dies(
    stack: Stack, workflows: list[str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**gateway_env(stack.env), "CHIFFON_REPLICA": "7"}
    doomed = start_service("chiffon.gateway", "gateway-doomed", env, tmp_path, port)
    await wait_ready(doomed)
    follower = GatewayClient(doomed.url, ADMIN_KEY, max_reconnect_delay=0.3)
    seen: list[Any] = []
    async with client(stack.gateway, ADMIN_KEY) as admin:
        run_id = await start(admin, "needs-approval", goal="survive")
        waiting = asyncio.Event()

        async def follow() -> None:
            async for event in follower.follow_run_events(run_id):
                seen.append(event)
                if event.type == "run.approval.requested":
                    waiting.set()

        task = asyncio.create_task(follow())
        await asyncio.wait_for(waiting.wait(), 30)
        os.killpg(doomed.process.pid, signal.SIGKILL)  # the connection drops mid-run
        doomed.process.wait(10)
        await admin.post(f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True})
        await until_status(admin, run_id, "succeeded")
        reborn = start_service("chiffon.gateway", "gateway-reborn", env, tmp_path, port)
        try:
            await wait_ready(reborn)
            await asyncio.wait_for(task, 30)
        finally:
            reborn.stop()
            await follower.close()
        everything = [
            e async for e in GatewayClient(stack.gateway.url, ADMIN_KEY).follow_run_events(run_id)
        ]
    assert [e.seq for e in seen] == [e.seq for e in everything]
    assert seen[-1].type == "run.completed"
