"""Every aggregate's domain.py loads no I/O library, not even through a package it uses
(the import-linter contract sees declared imports; this sees what Python loads)."""

from __future__ import annotations

import subprocess
import sys

import pytest

IO_LIBRARIES = ("nats", "sqlalchemy", "asyncpg", "httpx", "litellm", "grpc")


@pytest.mark.parametrize(
    "module", ["chiffon.executor.domain", "chiffon.gateway.domain", "chiffon.registry.domain"]
)
def test_a_domain_module_loads_no_io_library(module: str) -> None:
    probe = (
        f"import sys, {module}; print(' '.join(m for m in {IO_LIBRARIES!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
