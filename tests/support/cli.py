"""The ``chiffon`` command as a user runs it: a separate process, its exit code and output."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

CHIFFON = str(Path(sys.executable).with_name("chiffon"))


async def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """``chiffon ARGS`` with ``env`` (wide columns: no wrapped lines to match across)."""
    process = await asyncio.create_subprocess_exec(
        CHIFFON,
        *args,
        env={**env, "COLUMNS": "200"},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
