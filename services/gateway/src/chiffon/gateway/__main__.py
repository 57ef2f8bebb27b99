"""Composition root of the gateway: settings → telemetry → store → keys → app → servers.

``python -m chiffon.gateway`` serves the REST API, SSE and the dashboard on
``CHIFFON_PORT`` (with ``/healthz`` and ``/readyz``). Run as many replicas as you
like: keys, revocations and SSE positions are the same on each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import select

from chiffon.audit.hosting import audit_projections
from chiffon.commands import CommandBus
from chiffon.core.logging import get_logger
from chiffon.core.service import ServiceContext, run_service
from chiffon.gateway.app import create_app
from chiffon.gateway.auth import KeyCache
from chiffon.gateway.keys import ApiKeys
from chiffon.gateway.projections import ApiKeysProjection
from chiffon.gateway.runtime import Gateway, RunPositions
from chiffon.gateway.settings import GatewaySettings
from chiffon.gateway.sse import RunFeeds
from chiffon.projections import checkpoints
from chiffon.projections.host import Resources, open_resources

log = get_logger(__name__)

# The read models this gateway serves, projected by the executor.
SERVED_READ_MODELS = {"readmodels.runs": "RUNS", "readmodels.workflows": "WORKFLOWS"}


def read_model_check(
    resources: Resources, bound: float, started: float
) -> Callable[[], Awaitable[tuple[bool, str | None]]]:
    """Ready while each served read model is at its stream's end, or moved recently.

    ``started`` is the process's start on the monotonic clock: a read model with no
    checkpoint yet counts as idle since then. A model found behind counts as idle only
    since it was first seen behind: after a quiet spell its checkpoint is old, and the
    first events of the next burst must not make the gateway unready before the
    projector has had ``bound`` seconds to take them.
    """
    behind_since: dict[str, float] = {}

    async def check() -> tuple[bool, str | None]:
        async with resources.engine.connect() as conn:
            rows = {
                r.name: r
                for r in await conn.execute(
                    select(
                        checkpoints.c.name, checkpoints.c.position, checkpoints.c.updated_at
                    ).where(checkpoints.c.name.in_(list(SERVED_READ_MODELS)))
                )
            }
        now = datetime.now(UTC)
        details: list[str] = []
        ok = True
        for name, context in SERVED_READ_MODELS.items():
            last = await resources.store.last_sequence(context)
            row = rows.get(name)
            position = int(row.position) if row else 0
            if position >= last:
                behind_since.pop(name, None)
                details.append(f"{name} at {position}")
                continue
            if row is None:
                idle = time.monotonic() - started
            else:
                seen_behind = time.monotonic() - behind_since.setdefault(name, time.monotonic())
                idle = min((now - row.updated_at).total_seconds(), seen_behind)
            if idle > bound:
                ok = False
                details.append(f"{name} {last - position} events behind for {idle:.0f}s")
            else:
                details.append(f"{name} catching up ({last - position} behind)")
        return ok, "; ".join(details)

    return check


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, GatewaySettings)
    started = time.monotonic()
    # Registered before anything is awaited: /readyz must not pass before the keys are in.
    keys = KeyCache(settings.bootstrap_key())
    ctx.health.add("keys", lambda: (keys.loaded.is_set(), f"{len(keys)} keys at {keys.position}"))
    mark_started = ctx.health.starting()  # until the routes have what they serve from
    async with (
        open_resources(ctx) as resources,
        RunPositions(settings.database_dsn()) as positions,
    ):
        store = resources.store
        follow = asyncio.create_task(keys.follow(store, resources.engine), name="keys:follow")
        projections = await resources.run_projections(
            [ApiKeysProjection(), *audit_projections(store)]
        )
        ctx.health.add(
            "read models", read_model_check(resources, settings.readiness_max_lag_seconds, started)
        )
        feeds = RunFeeds(store, linger=settings.sse_linger_seconds)
        ctx.app.state.gateway = Gateway(
            settings=settings,
            store=store,
            engine=resources.engine,
            bus=CommandBus(store, settings.namespace, timeout=settings.command_timeout_seconds),
            keys=keys,
            api_keys=ApiKeys(store),
            feeds=feeds,
            limiter=ctx.app.state.limiter,
            instance=ctx.instance,
            positions=positions,
        )
        if settings.bootstrap_key() is None:
            log.warning(
                "gateway.no_bootstrap_key",
                hint="set CHIFFON_BOOTSTRAP_ADMIN_KEY to issue the first keys",
            )
        mark_started()
        log.info("gateway.ready", instance=ctx.instance, port=settings.port)
        await ctx.stopping.wait()
        # Followers get the end of their stream now (they resume elsewhere with Last-Event-ID).
        await feeds.close()
        for task in [follow, *projections]:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(follow, *projections, return_exceptions=True)


def main() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover — uvloop is optional (not on Windows)
        pass
    settings = GatewaySettings()
    run_service("gateway", settings, serve, app=create_app(settings))


if __name__ == "__main__":
    main()
