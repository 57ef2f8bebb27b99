"""Composition root of the cost service: settings → telemetry → store → application → servers.

Every replica prices calls (the pricer's durable consumer gives each call to one of
them), runs the spend projection, and answers the budget commands (one queue group).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from chiffon.commands import CommandBus
from chiffon.core.logging import get_logger
from chiffon.core.service import ServiceContext, run_service
from chiffon.cost.budget_service import BudgetService
from chiffon.cost.pricing import Pricer
from chiffon.cost.projections import SpendProjection
from chiffon.cost.settings import CostSettings
from chiffon.events import Actor
from chiffon.projections.host import open_resources
from chiffon.spend.prices import PriceBook

log = get_logger(__name__)


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, CostSettings)
    started = ctx.health.starting()
    # Loaded before anything connects: a bad override stops the service at start.
    book = PriceBook.load(settings.price_overrides)
    async with open_resources(ctx) as resources:
        store = resources.store
        actor = Actor.service("cost", settings.replica)
        budgets = BudgetService(store, actor, prices=book)
        await budgets.start()
        bus = CommandBus(store, settings.namespace)
        subscriptions = [
            await bus.serve(command, handler) for command, handler in budgets.handlers()
        ]
        pricer = Pricer(
            store,
            book,
            actor,
            batch=settings.pricer_batch,
            ack_wait=settings.pricer_ack_wait_seconds,
            replicas=settings.stream_replicas,
        )
        await pricer.setup()
        tasks = await resources.run_projections([SpendProjection()])
        # These two end by themselves once ``stopping`` is set (a pull's calls acked).
        ending = [
            asyncio.create_task(pricer.run(ctx.stopping), name="cost:pricer"),
            asyncio.create_task(budgets.watch(ctx.stopping), name="cost:budgets"),
        ]
        tasks += ending
        ctx.health.add("pricer", pricer.healthy)
        started()
        log.info("cost.ready", instance=ctx.instance, price_map=book.version)
        await ctx.stopping.wait()
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        await asyncio.wait(ending, timeout=5.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def load_settings() -> CostSettings:
    """The settings, or exit 2 with what is wrong (a bad price override, say)."""
    try:
        settings = CostSettings()
        PriceBook.load(settings.price_overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        _refuse(problems)
    except (SettingsError, ValueError) as error:
        cause = error.__cause__
        _refuse(f"{error}" + (f": {cause}" if cause else ""))
    return settings


def _refuse(problems: str) -> NoReturn:
    print(f"chiffon cost: invalid settings: {problems}", file=sys.stderr)  # noqa: T201
    raise SystemExit(2)


def main() -> None:
    run_service("cost", load_settings(), serve)


if __name__ == "__main__":
    main()
