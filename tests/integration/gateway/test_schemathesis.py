"""Fuzz the API from its own OpenAPI schema, authenticated: no 5xx, and every response
conforms to what the schema says (status, content type, body, headers)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.fixtures import eventually

from .conftest import StartGateway
from .support import ADMIN_KEY, Service
from .test_triggers_service import trigger_process  # noqa: F401 — a fixture

# At least 200 generated cases per operation (issue 16): one pass of the examples,
# coverage and fuzzing phases, ended by the count, not by a time budget. (With
# `--max-time`, schemathesis repeats fuzzing until the budget is spent.) Lower it locally
# with CHIFFON_FUZZ_EXAMPLES=12 for a quick run. CHIFFON_FUZZ_SECONDS bounds the whole run:
# a guard against a hang, not a speed check, so it is far above the ~200 s a run takes on
# a quiet 2-core machine (a machine three times as busy took 420 s).
EXAMPLES = int(os.environ.get("CHIFFON_FUZZ_EXAMPLES", "200"))
DEADLINE = int(os.environ.get("CHIFFON_FUZZ_SECONDS", "1200"))


async def known_ids(gateway: Service, workflows: list[str]) -> str:
    """Schemathesis's config: ids and names that exist, offered for half of the generated
    path parameters (and a run's workflow), so that the operations on a run, a key or a
    workflow reach their logic rather than a 404 (the other half stay generated, hostile
    ones included). The runs offered have ended: a live run's event stream stays open
    and would hold each request until its timeout."""
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as admin:
        succeeded = await start_run(admin, "bench-three", {"topic": "owls"})
        waiting = await start_run(admin, "needs-approval", {"goal": "ship"})
        await until_status(admin, waiting, "waiting_approval")
        cancelled = await admin.post(f"/v1/runs/{waiting}/cancel", json={"reason": "fuzz"})
        assert cancelled.status_code == 202, cancelled.text
        await until_status(admin, succeeded, "succeeded")
        await until_status(admin, waiting, "cancelled")
        key = await admin.post("/v1/keys", json={"name": "fuzzed", "role": "viewer"})
        assert key.status_code == 201, key.text
    dictionaries = {
        "runs": [succeeded, waiting],
        "nodes": ["sign_off", "plan"],
        "keys": [key.json()["id"]],
        "workflows": workflows,
    }
    lines = []
    for name, values in dictionaries.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    # Only these ids: by default schemathesis also reuses ids it reads in responses
    # (GET /v1/keys lists every key), and would revoke the keys, cancel the runs and
    # disable the triggers that the tests sharing this stack rely on.
    for phase in ("examples", "coverage", "fuzzing"):
        lines += [f"[phases.{phase}.extra-data-sources]", "responses = false", ""]
    lines.append("[parameters]")
    for parameter, name in [
        ("path.run_id", "runs"),
        ("path.node_id", "nodes"),
        ("path.key_id", "keys"),
        ("path.name", "workflows"),
        ("body.workflow", "workflows"),  # POST /v1/runs
    ]:
        lines.append(f'"{parameter}" = {{ dictionary = "{name}", probability = 0.5 }}')
    return "\n".join(lines) + "\n"


async def start_run(admin: httpx.AsyncClient, workflow: str, inputs: dict[str, str]) -> str:
    response = await admin.post("/v1/runs", json={"workflow": workflow, "inputs": inputs})
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


async def until_status(admin: httpx.AsyncClient, run_id: str, status: str) -> None:
    async def reached() -> bool:
        response = await admin.get(f"/v1/runs/{run_id}")
        return response.status_code == 200 and response.json()["status"] == status

    await eventually(reached, timeout=30, message=f"run {run_id} {status}")


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE + 120)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    start_gateway: StartGateway,
    registry: Service,
    cost_service: Service,
    trigger_process: Service,
    workflows: list[str],
    tmp_path: Path,
) -> None:
    # The registry answers the agent-credential routes, and the cost service the budget
    # routes, and the trigger service the trigger and schedule routes, as on a real stack.
    # A replica of its own: the fuzzer's wrong-key probes count against its address in
    # that replica's failed-authentication throttle, not in the one the other tests use.
    # Schemathesis sends one wrong-key probe per operation (its other auth probes carry no
    # key, which is no guess): 31 operations, more than the default burst (20), which
    # then answered 429 to most of the last operations fuzzed. The burst is raised above
    # the operation count here (the throttle itself has tests of its own).
    gateway = await start_gateway(
        21, env={"CHIFFON_AUTH_FAILURE_BURST": "100", "CHIFFON_AUTH_FAILURE_PREFIX_BURST": "200"}
    )
    config = tmp_path / "schemathesis.toml"
    storage = tmp_path / "hypothesis"
    tables = asyncio.create_task(unicode_tables(storage))  # while the runs below finish
    config.write_text(await known_ids(gateway, workflows))
    await tables
    started = time.monotonic()
    # Two processes, one worker each, over halves of the API: schemathesis's workers are
    # threads, and CPython 3.11's ast module keeps its recursion depth in shared state, so
    # two threads parsing at once can fail with "AST constructor recursion depth
    # mismatch" (python/cpython#106905), an error of the fuzzer, not of Chiffon.
    # The halves take about as long: the test lasts as long as the slower one. Measured
    # per operation (schemathesis's JUnit report, 200 examples), the runs', triggers' and
    # schedules' 23 operations took 359 s and the other 22 took 311 s; a run's event
    # stream (24 s) goes with the others: 335 s each.
    runs_half = r"^/v1/(runs(?!/\{run_id\}/events$)|triggers|schedules)"
    halves = {
        "runs": ["--include-path-regex", runs_half],
        "rest": ["--exclude-path-regex", runs_half],
    }
    outputs = await asyncio.gather(
        *(fuzz(gateway, config, selection, storage, tmp_path) for selection in halves.values())
    )
    elapsed = time.monotonic() - started
    for half, (returncode, text) in zip(halves, outputs, strict=True):
        (tmp_path / f"schemathesis-{half}.txt").write_text(
            f"{text}\n{EXAMPLES} examples per operation in {elapsed:.0f} s\n"
        )
        assert returncode == 0, text[-12000:]
        assert "No issues found" in text or "passed" in text, text[-4000:]


async def unicode_tables(storage: Path) -> None:
    """Hypothesis's tables of Unicode categories and of the characters UTF-8 encodes, made
    once into ``storage`` for both fuzzers. Each process otherwise makes its own (it keeps
    them under its working directory's .hypothesis/, new in every run): a loop over every
    code point, 3.4 s of CPU in each (3.9 s without the tables, 0.45 s with them). The
    same tables, so the same cases."""
    make = (
        "from hypothesis import strategies as st\n"
        "st.characters(codec='utf-8').example()\n"
        "st.text().example()\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "ignore",
        "-c",
        make,
        env={**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(storage)},
    )
    assert await asyncio.wait_for(process.wait(), 120) == 0


async def fuzz(
    gateway: Service, config: Path, selection: list[str], storage: Path, tmp_path: Path
) -> tuple[int, str]:
    st = Path(sys.executable).with_name("schemathesis")
    command = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{gateway.url}/openapi.json",
        *selection,
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--checks",
        "all",
        # Valid-looking input may still name a workflow or run that does not exist (404).
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "20240601",
        "--request-timeout",
        "15",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "HYPOTHESIS_STORAGE_DIRECTORY": str(storage)},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), DEADLINE)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"schemathesis did not finish within {DEADLINE} s") from None
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")
