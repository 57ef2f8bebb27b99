"""The gateway's read-model readiness check.

A read model with no checkpoint yet counts as idle since the gateway started: ready
("catching up") within the bound, not ready after it. One whose checkpoint is old
because nothing happened for a while counts as idle only since it was first seen behind.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from chiffon.gateway.__main__ import read_model_check
from tests.support.fixtures import eventually


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


class _OldCheckpoints:
    """Both read models at position 3, last moved a minute ago (a quiet spell)."""

    async def execute(self, _statement: Any) -> list[Any]:
        moved = datetime.now(UTC) - timedelta(seconds=60)
        return [
            SimpleNamespace(name=name, position=3, updated_at=moved)
            for name in ("readmodels.runs", "readmodels.workflows")
        ]


class _OldEngine:
    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[_OldCheckpoints]:
        yield _OldCheckpoints()


async def test_a_burst_after_a_quiet_spell_gets_the_bound_to_be_taken() -> None:
    resources = SimpleNamespace(engine=_OldEngine(), store=_Store())
    check = read_model_check(resources, bound=0.2, started=time.monotonic() - 600)

    ok, detail = await check()  # first seen 2 events behind, its checkpoint 60 s old

    assert ok is True
    assert detail is not None and detail.startswith("readmodels.runs catching up (2 behind)")

    async def unready() -> str | None:
        ok, detail = await check()
        return None if ok else detail

    # Still behind past the bound: now it is not ready.
    detail = await eventually(unready, timeout=5, message="not ready past the bound")
    assert detail.startswith("readmodels.runs 2 events behind for 0")
