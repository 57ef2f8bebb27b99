"""The budget commands (set, remove, list) and the ledger's watch (soft-limit alerts,
expired reservations on the audit trail). Filled in by issue 18's budget work."""

from __future__ import annotations

import asyncio
from typing import Any

from chiffon.commands.model import Command
from chiffon.events import Actor
from chiffon.eventstore import EventStore


class BudgetService:
    """Answers the budget commands from the budgets folded in memory (COSTS stream)."""

    def __init__(self, store: EventStore, actor: Actor) -> None:
        self._store = store
        self._actor = actor

    async def start(self) -> None:
        """Fold the budgets so far; return once caught up."""

    async def watch(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: alerts and expiry records, as budgets change and time passes."""
        await stopping.wait()

    def handlers(self) -> list[tuple[type[Command], Any]]:
        """(command type, handler) pairs for the command bus."""
        return []
