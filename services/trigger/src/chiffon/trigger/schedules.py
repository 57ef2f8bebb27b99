"""(Being built.)"""

from __future__ import annotations

import asyncio
from typing import Any

from chiffon.eventstore import EventStore


class Schedules:
    def __init__(self, store: EventStore, *args: Any) -> None:
        self.store = store

    async def start(self) -> None:
        """Fold what this component needs before the service is ready."""

    def handlers(self) -> list[tuple[type[Any], Any]]:
        """The commands this component answers, with their handlers."""
        return []

    async def run(self, stopping: asyncio.Event) -> None:
        """Its background work, until stopping."""
        await stopping.wait()

    def healthy(self) -> tuple[bool, str | None]:
        return True, None
