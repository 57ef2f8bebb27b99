"""Fuzz the API from its own OpenAPI schema, authenticated: no 5xx, and every response
conforms to what the schema says (status, content type, body, headers)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from .conftest import Stack
from .support import ADMIN_KEY

# Bounded so that CI stays fast (about a minute on 2 cores); raise it locally with
# CHIFFON_FUZZ_EXAMPLES=200 for a deeper run.
EXAMPLES = int(os.environ.get("CHIFFON_FUZZ_EXAMPLES", "12"))
MAX_TIME = int(os.environ.get("CHIFFON_FUZZ_SECONDS", "40"))


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    stack: Stack, workflows: list[str], tmp_path: Path
) -> None:
    st = Path(sys.executable).with_name("schemathesis")
    command = [
        str(st),
        "run",
        f"{stack.gateway.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--checks",
        "all",
        # Valid-looking input may still name a workflow or run that does not exist (404).
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        str(EXAMPLES),
        "--max-time",
        str(MAX_TIME),
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
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    output, _ = await asyncio.wait_for(process.communicate(), MAX_TIME + 120)
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert process.returncode == 0, text[-12000:]
    assert "No issues found" in text or "passed" in text, text[-4000:]
