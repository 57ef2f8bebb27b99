"""The gateway's read-model readiness check, for a read model with no checkpoint yet.

Such a read model counts as idle since the gateway started: ready ("catching up") within
the bound, not ready after it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from chiffon.gateway.__main__ import read_model_check


class _NoCheckpoints:
    async def execute(self, _statement: Any) -> list[Any]:
        return []


class _Engine:
    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_NoCheckpoints]:
        yield _NoCheckpoints()


class _Store:
    async def last_sequence(self, _context: str) -> int:
        return 5


def _resources() -> Any:
    return SimpleNamespace(engine=_Engine(), store=_Store())


async def test_a_read_model_without_checkpoint_is_catching_up_within_the_bound() -> None:
    check = read_model_check(_resources(), bound=30.0, started=time.monotonic())

    ok, detail = await check()

    assert ok is True
    assert detail == (
        "readmodels.runs catching up (5 behind); readmodels.workflows catching up (5 behind)"
    )


async def test_a_read_model_without_checkpoint_is_not_ready_past_the_bound() -> None:
    check = read_model_check(_resources(), bound=30.0, started=time.monotonic() - 60)

    ok, detail = await check()

    assert ok is False
    assert detail is not None
    assert detail.startswith("readmodels.runs 5 events behind for 6")
