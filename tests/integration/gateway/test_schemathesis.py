"""Fuzz the API from its own OpenAPI schema, authenticated: no 5xx, and every response
conforms to what the schema says (status, content type, body, headers)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from .conftest import StartGateway
from .support import ADMIN_KEY

# At least 200 generated cases per operation (issue 16): one pass of the examples,
# coverage and fuzzing phases, ended by the count, not by a time budget. (With
# `--max-time`, schemathesis repeats fuzzing until the budget is spent.) Lower it locally
# with CHIFFON_FUZZ_EXAMPLES=12 for a quick run; CHIFFON_FUZZ_SECONDS bounds the whole run.
EXAMPLES = int(os.environ.get("CHIFFON_FUZZ_EXAMPLES", "200"))
DEADLINE = int(os.environ.get("CHIFFON_FUZZ_SECONDS", "420"))


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE + 120)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    start_gateway: StartGateway, workflows: list[str], tmp_path: Path
) -> None:
    # A replica of its own: the fuzzer's wrong-key probes count against its address in
    # that replica's failed-authentication throttle, not in the one the other tests use.
    gateway = await start_gateway(21)
    st = Path(sys.executable).with_name("schemathesis")
    command = [
        str(st),
        "run",
        f"{gateway.url}/openapi.json",
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
        "2",
        "--no-color",
    ]
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), DEADLINE)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"schemathesis did not finish within {DEADLINE} s") from None
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(
        f"{text}\n{EXAMPLES} examples per operation in {time.monotonic() - started:.0f} s\n"
    )
    assert process.returncode == 0, text[-12000:]
    assert "No issues found" in text or "passed" in text, text[-4000:]
