"""Composition root of the registry: settings → telemetry → store → application → servers.

Every replica serves the agent-facing HTTP API on its port, answers the credential
commands (one queue group), sweeps for lapsed agents and runs the agents projection.
"""

from __future__ import annotations

import asyncio
import contextlib

from chiffon.commands import CommandBus
from chiffon.commands.model import (
    IssueAgentCredential,
    ListAgentCredentials,
    RevokeAgentCredential,
)
from chiffon.core.logging import get_logger
from chiffon.core.service import ServiceContext, run_service
from chiffon.events import Actor
from chiffon.projections.host import open_resources
from chiffon.registry.api import create_app
from chiffon.registry.application import Agents, AgentsView, Credentials
from chiffon.registry.projections import AgentsProjection
from chiffon.registry.settings import RegistrySettings

log = get_logger(__name__)


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, RegistrySettings)
    started = ctx.health.starting()
    async with open_resources(ctx) as resources:
        store = resources.store
        actor = Actor.service("registry", settings.replica)
        view = AgentsView()
        following = asyncio.create_task(view.follow(store), name="registry:view")
        caught_up = asyncio.create_task(view.caught_up.wait())
        await asyncio.wait({following, caught_up}, return_when=asyncio.FIRST_COMPLETED)
        if following.done():
            following.result()  # it failed: so does start-up
        secret = settings.bootstrap_agent_credential
        credentials = Credentials(
            store,
            actor,
            bootstrap=(secret.get_secret_value(), settings.bootstrap_agent_name)
            if secret
            else None,
        )
        agents = Agents(store, actor, view, grace=settings.heartbeat_grace_seconds)
        ctx.app.state.registry = (agents, credentials)
        bus = CommandBus(store, settings.namespace)
        subscriptions = [
            await bus.serve(IssueAgentCredential, credentials.issue),
            await bus.serve(RevokeAgentCredential, credentials.revoke),
            await bus.serve(ListAgentCredentials, credentials.list),
        ]
        tasks = await resources.run_projections([AgentsProjection()])
        tasks.append(asyncio.create_task(agents.run_sweeper(ctx.stopping), name="sweeper"))
        ctx.health.add("view", lambda: (not following.done(), None))
        started()
        log.info("registry.ready", instance=ctx.instance)
        await ctx.stopping.wait()
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        for task in (*tasks, following):
            task.cancel()
        await asyncio.gather(*tasks, following, return_exceptions=True)


def main() -> None:
    run_service("registry", RegistrySettings(), serve, app=create_app())


if __name__ == "__main__":
    main()
