"""The chiffon CLI end to end: validate, register, run --follow, runs list/show/approve/cancel.

Each command runs as a user would run it (a subprocess, the gateway's address and an API
key from CHIFFON_* variables) against a real gateway and one real executor process on the
session's NATS and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chiffon.cli.http_client import GatewayClient
from tests.integration.executor.conftest import (  # noqa: F401 — shared_env is a fixture
    ExecutorProcess,
    shared_env,
    start_executor,
    start_gateway,
    wait_ready,
)
from tests.integration.gateway.support import ADMIN_KEY, stop_all
from tests.support.cli import run_cli
from tests.support.fixtures import eventually

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
RUN_ID = re.compile(r"run ([0-9a-f-]{36})")


@pytest.fixture(scope="module")
async def cli_stack(
    shared_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, str]]:  # noqa: F811
    logs = tmp_path_factory.mktemp("cli")
    proc: ExecutorProcess = start_executor(shared_env, logs / "executor.log", replica=1)
    gateway = None
    try:
        await wait_ready(proc)
        gateway = await start_gateway(shared_env, logs)
        env = {
            k: v
            for k, v in shared_env.items()
            if not k.startswith("CHIFFON_") or k == "CHIFFON_LOG_FORMAT"
        }
        # What the CLI needs to know: where the gateway is, and a key.
        env.update(CHIFFON_GATEWAY_URL=gateway.url, CHIFFON_API_KEY=ADMIN_KEY)
        yield env
    finally:
        if gateway is not None:
            stop_all([gateway])
        proc.stop(timeout=10)


async def status_is(env: dict[str, str], run_id: str, status: str) -> None:
    """Wait (in-process, through the CLI's own client) until the read model shows it."""
    async with GatewayClient(env["CHIFFON_GATEWAY_URL"], env["CHIFFON_API_KEY"]) as client:

        async def probe() -> bool:
            run = await client.get_run(run_id)
            return run is not None and run.status == status

        await eventually(probe, timeout=20, message=f"run {run_id} {status}")


async def chiffon(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    return await run_cli(env, *args, cwd=REPO, timeout=timeout)


async def test_validate_reports_every_issue_with_lines(
    cli_stack: dict[str, str], tmp_path: Path
) -> None:
    examples = sorted(EXAMPLES.glob("*.yaml"))
    code, out, _ = await chiffon(cli_stack, "validate", *(str(p) for p in examples))
    assert code == 0 and out.count(": ok") == len(examples) >= 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nversion: 1\ndefaults: {model: chiffon/echo}\nnodes:\n"
        "  - {id: a, type: llm, prompt: 'hi {nam}'}\n  - {id: b, type: sleep}\n"
        "edges:\n  - {from: a, to: c, when: 'open(x)'}\n"
    )
    code, _, err = await chiffon(cli_stack, "validate", str(bad))
    assert code == 2
    assert "unknown node type 'sleep'" in err and "function calls are not allowed" in err
    assert f"{bad}:6: nodes[1].type: unknown node type 'sleep'" in err
    assert (
        f"{bad}:8: edges[0].when: function calls are not allowed" in err and "Traceback" not in err
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\xff\xfe\n")
    code, _, err = await chiffon(cli_stack, "validate", str(binary))
    assert code == 2 and "invalid UTF-8" in err and "Traceback" not in err


async def test_run_follow_prints_nodes_and_exits_with_the_end(cli_stack: dict[str, str]) -> None:
    code, out, err = await chiffon(
        cli_stack, "run", str(EXAMPLES / "linear.yaml"), "-i", "topic=tides", "--follow"
    )
    assert code == 0, err
    assert "running on executor-1" in out
    for node in ("research", "outline", "write"):
        assert f"✓ {node}" in out
    assert re.search(r"✓ research\s+\d+ ms\s+\d+\+\d+ tokens", out)
    assert "run succeeded in" in out and "brief: brief: Write the brief" in out
    run_id = RUN_ID.search(out).group(1)  # type: ignore[union-attr]

    await status_is(cli_stack, run_id, "succeeded")
    code, out, _ = await chiffon(cli_stack, "runs", "list", "--workflow", "linear-brief")
    assert code == 0 and run_id in out and "succeeded" in out
    code, out, _ = await chiffon(cli_stack, "runs", "show", run_id)
    assert code == 0 and "executor-1 (pid" in out and "research" in out and "tokens" in out
    code, _, err = await chiffon(cli_stack, "runs", "show", "0000")
    assert code == 4 and "no run '0000'" in err
    for unknown in ("0000", ">"):  # no events, or no run id at all: not a wait forever
        code, _, err = await chiffon(cli_stack, "runs", "follow", unknown)
        assert code == 4 and f"no run '{unknown}'" in err


async def test_failed_run_exits_1_with_the_reason(
    cli_stack: dict[str, str], tmp_path: Path
) -> None:
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text(
        "name: deploy-cli\nversion: 1\nnodes:\n"
        "  - {id: publish, type: agent, requires: [shell], capacity_timeout: 1s,\n"
        "     task: {tool: shell, command: 'echo ok'}}\n"
    )
    code, out, _ = await chiffon(cli_stack, "run", str(deploy), "--follow")
    assert code == 1
    assert "no agent available for capabilities [shell]" in out and "run failed" in out


async def test_approve_and_cancel_from_the_cli(cli_stack: dict[str, str]) -> None:
    code, out, err = await chiffon(
        cli_stack, "run", str(EXAMPLES / "parallel-approval.yaml"), "-i", "goal=launch"
    )
    assert code == 0, err
    run_id = RUN_ID.search(out).group(1)  # type: ignore[union-attr]
    await status_is(cli_stack, run_id, "waiting_approval")
    code, out, _ = await chiffon(cli_stack, "runs", "approvals")
    assert f"chiffon runs approve {run_id} sign_off" in out
    code, out, err = await chiffon(cli_stack, "runs", "approve", run_id, "nope")
    assert code == 5 and "not waiting for an approval of node 'nope'" in err
    code, out, _ = await chiffon(cli_stack, "runs", "approve", run_id, "sign_off", "-m", "go")
    assert code == 0 and "approved sign_off" in out
    code, out, _ = await chiffon(cli_stack, "runs", "follow", run_id)
    # Decided through the gateway: the approval names the key that decided it.
    assert code == 0 and "approved sign_off by api_key:" in out and "run succeeded" in out

    code, out, _ = await chiffon(cli_stack, "run", "parallel-approval", "-i", "goal=second")
    second = RUN_ID.search(out).group(1)  # type: ignore[union-attr]
    await status_is(cli_stack, second, "waiting_approval")
    code, out, _ = await chiffon(cli_stack, "runs", "cancel", second, "--reason", "not now")
    assert code == 0 and "cancelled" in out
    code, out, _ = await chiffon(cli_stack, "runs", "follow", second)
    assert code == 3 and "run cancelled" in out and "not now" in out


async def test_usage_errors_and_unreachable_services(cli_stack: dict[str, str]) -> None:
    code, _, err = await chiffon(cli_stack, "run", "linear-brief", "-i", "novalue")
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = await chiffon(cli_stack, "run", "linear-brief", "-i", "=[1]")
    assert code == 2 and "empty name" in err
    code, _, err = await chiffon(cli_stack, "run", "linear-brief", "-i", "topic=x", "-i", "extra=1")
    assert code == 2 and "unknown input 'extra'" in err
    code, _, err = await chiffon(cli_stack, "run", "missing-workflow")
    assert code == 4 and "no workflow named 'missing-workflow'" in err
    down = {**cli_stack, "CHIFFON_GATEWAY_URL": "http://127.0.0.1:9"}
    code, _, err = await chiffon(down, "run", "linear-brief", "-i", "topic=x")
    assert code == 6 and "cannot reach the gateway" in err and "Traceback" not in err
