"""The life of a service process: health endpoints, signals, graceful shutdown.

Every service's ``__main__`` builds its settings and an async ``main(ctx)``, then calls
``run_service``. The process serves ``GET /healthz`` (up) and ``GET /readyz`` (every
component healthy) on ``settings.port``; a service may mount more routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from chiffon.core.logging import configure_logging, get_logger
from chiffon.core.runtime import tune_gc
from chiffon.core.settings import ChiffonSettings
from chiffon.core.telemetry import configure_telemetry

log = get_logger(__name__)

Check = Callable[[], Awaitable[tuple[bool, str | None]] | tuple[bool, str | None]]


@dataclass
class Health:
    """Named readiness checks; the process is ready when all pass."""

    checks: dict[str, Check] = field(default_factory=dict)

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def starting(self) -> Callable[[], None]:
        """A check that fails until the returned function is called. Add it before the
        first ``await`` of start-up and call it once everything the service offers is
        in place: the checks added along the way may all pass before the last of it
        (a command subscription, say) exists."""
        started = False

        def check() -> tuple[bool, str | None]:
            return started, None if started else "starting"

        def done() -> None:
            nonlocal started
            started = True

        self.add("startup", check)
        return done

    async def report(self) -> tuple[bool, dict[str, Any]]:
        # A service adds checks as it starts; one added while a report was awaiting an
        # earlier check must not be missed, or a starting service reads as ready.
        while True:
            checks = dict(self.checks)
            components: dict[str, Any] = {}
            ready = True
            for name, check in checks.items():
                try:
                    outcome = check()
                    ok, detail = outcome if isinstance(outcome, tuple) else await outcome
                except Exception as error:  # noqa: BLE001 — a failing check is a report
                    ok, detail = False, f"{type(error).__name__}: {error}"
                components[name] = {"ok": ok, **({"detail": detail} if detail else {})}
                ready = ready and ok
            if self.checks.keys() == checks.keys():
                return ready, components


@dataclass
class ServiceContext:
    name: str
    settings: ChiffonSettings
    health: Health
    app: FastAPI
    stopping: asyncio.Event

    @property
    def instance(self) -> str:
        return f"{self.name}-{self.settings.replica}"


def health_app(name: str, health: Health, app: FastAPI | None = None) -> FastAPI:
    # FastAPI traces every request by default, with a span per dependency: probes every
    # few seconds made three spans each for nothing a trace is read for.
    app = app or FastAPI(
        title=f"chiffon-{name}",
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "service": name, "pid": os.getpid()}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ready, components = await health.report()
        return JSONResponse(
            {"status": "ready" if ready else "unready", "service": name, "components": components},
            status_code=200 if ready else 503,
        )

    return app


async def _call(main: Callable[[ServiceContext], Awaitable[None]], ctx: ServiceContext) -> None:
    await main(ctx)


def run_service(
    name: str,
    settings: ChiffonSettings,
    main: Callable[[ServiceContext], Awaitable[None]],
    *,
    app: FastAPI | None = None,
) -> None:
    """Configure the process, serve health on ``settings.port`` and run ``main`` until a signal."""
    configure_logging(service=name, level=settings.log_level, fmt=settings.log_format)
    configure_telemetry(name, replica=settings.replica)
    log.info("service.starting", settings=settings.masked(), pid=os.getpid())
    tune_gc()
    asyncio.run(_serve(name, settings, main, app))


async def _serve(
    name: str,
    settings: ChiffonSettings,
    main: Callable[[ServiceContext], Awaitable[None]],
    app: FastAPI | None,
) -> None:
    health = Health()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    ctx = ServiceContext(name, settings, health, health_app(name, health, app), stopping)
    config = uvicorn.Config(
        ctx.app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # Our handlers (above) own SIGTERM/SIGINT: main drains first, then HTTP stops.
    # uvicorn has no option for this: its method is replaced, which its types do not allow.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    web = asyncio.create_task(server.serve(), name="http")
    work: asyncio.Task[None] = asyncio.create_task(_call(main, ctx), name="main")
    stop = asyncio.create_task(stopping.wait(), name="stop")
    done, _ = await asyncio.wait({web, work, stop}, return_when=asyncio.FIRST_COMPLETED)
    stopping.set()
    failed = next((t for t in done if t is not stop and not t.cancelled() and t.exception()), None)
    if work not in done:
        # Give main a chance to drain (it watches ctx.stopping), then cancel it.
        try:
            await asyncio.wait_for(asyncio.shield(work), timeout=10)
        except TimeoutError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        except Exception:  # main failed while draining: report it below
            failed = failed or work
    server.should_exit = True
    await asyncio.gather(web, return_exceptions=True)
    log.info("service.stopped")
    if failed is not None:
        error = failed.exception()
        log.error("service.failed", error=f"{type(error).__name__}: {error}")
        raise SystemExit(1)
