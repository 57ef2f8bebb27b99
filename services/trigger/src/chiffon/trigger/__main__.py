"""Composition root of the trigger service: settings → telemetry → store → application → servers.

Every replica serves ``/hooks/{trigger}`` (a delivery is stored once whichever replica
takes it), answers the trigger and schedule commands (one queue group), fires schedule
ticks (each tick starts one run, however many replicas see it) and sends replies.
"""

from __future__ import annotations

import asyncio
import contextlib

from chiffon.commands import CommandBus
from chiffon.core.logging import get_logger
from chiffon.core.service import ServiceContext, run_service
from chiffon.events import Actor
from chiffon.projections.host import open_resources
from chiffon.trigger.hooks import Hooks, create_app
from chiffon.trigger.replies import Replies
from chiffon.trigger.schedules import Schedules
from chiffon.trigger.settings import TriggerSettings

log = get_logger(__name__)


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, TriggerSettings)
    started = ctx.health.starting()
    async with open_resources(ctx) as resources:
        store = resources.store
        actor = Actor.service("trigger", settings.replica)
        bus = CommandBus(store, settings.namespace)
        hooks = Hooks(store, bus, actor, settings)
        schedules = Schedules(store, bus, actor, settings)
        replies = Replies(store, actor, settings)
        components = (hooks, schedules, replies)
        for component in components:
            await component.start()
        ctx.app.state.hooks = hooks
        subscriptions = [
            await bus.serve(command, handler)
            for component in components
            for command, handler in component.handlers()
        ]
        running = [
            asyncio.create_task(
                component.run(ctx.stopping), name=f"trigger:{type(component).__name__}"
            )
            for component in components
        ]
        for component in components:
            ctx.health.add(type(component).__name__.lower(), component.healthy)
        started()
        log.info("trigger.ready", instance=ctx.instance)
        await ctx.stopping.wait()
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        await asyncio.wait(running, timeout=5.0)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def main() -> None:
    # uvloop as the gateway has it: the delivery path is HTTP and NATS round trips.
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover — uvloop is optional (not on Windows)
        pass
    run_service("trigger", TriggerSettings(), serve, app=create_app())


if __name__ == "__main__":
    main()
