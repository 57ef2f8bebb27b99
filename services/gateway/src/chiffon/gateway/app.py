"""The FastAPI application: routers, middleware, problem handlers, the dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.routing import APIRoute

from chiffon.gateway import dashboard
from chiffon.gateway.auth import AuthMiddleware, KeyCache
from chiffon.gateway.middleware import BodyLimitMiddleware, RunViewFastPath
from chiffon.gateway.problems import install_problem_handlers
from chiffon.gateway.ratelimit import RateLimiter
from chiffon.gateway.routers import API_ROUTERS
from chiffon.gateway.settings import GatewaySettings
from chiffon.gateway.throttle import AuthThrottle

if TYPE_CHECKING:
    from chiffon.gateway.runtime import Gateway

DESCRIPTION = """\
The public API of Chiffon: register workflows, start and follow runs, decide
approvals, manage API keys.

Every route needs an API key (`Authorization: Bearer chf_...`) with a role: **viewer**
(read), **operator** (runs, approvals, cancels) or **admin** (workflows, keys). Errors
are `application/problem+json` (RFC 9457) with a stable `type` per kind of error.
"""


def _untraced(scope: object) -> bool:
    """Health probes and SSE streams get no span (a stream may last for hours, and its
    telemetry wrapper would cost on every frame to every follower)."""
    path = scope.get("path", "") if isinstance(scope, dict) else ""
    if path.endswith("/events"):
        return True
    return not path.startswith(("/v1/", "/runs", "/start", "/keys", "/login", "/logout"))


def operation_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def create_app(settings: GatewaySettings) -> FastAPI:
    app = FastAPI(
        title="Chiffon API",
        version="1",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        generate_unique_id_function=operation_id,
        swagger_ui_parameters={"persistAuthorization": True},
        # FastAPI's own OpenTelemetry: one server span per request, continuing the
        # caller's traceparent (the routes put it on their commands, so the events
        # carry the caller's trace). Per-dependency spans cost more than they tell.
        telemetry={
            "tracing": True,
            "operation_spans": False,
            "metrics": False,
            "logs": False,
            "exclude": _untraced,
        },
    )
    app.state.gateway = None
    app.state.cookie_name = settings.cookie_name
    limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    app.state.limiter = limiter
    throttle = AuthThrottle(
        burst=settings.auth_failure_burst,
        window=settings.auth_failure_window_seconds,
        prefix_burst=settings.auth_failure_prefix_burst,
        max_clients=settings.auth_failure_max_clients,
    )
    app.state.auth_throttle = throttle
    app.state.trust_forwarded_for = settings.trust_forwarded_for

    install_problem_handlers(app, html_errors=dashboard.error_page)
    # Starlette types every handler as taking Exception, though it calls each with its own.
    app.add_exception_handler(dashboard.LoginRequired, dashboard.login_redirect)  # type: ignore[arg-type]
    for router in API_ROUTERS:
        app.include_router(router)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.static_files, name="static")

    def keys() -> KeyCache | None:
        gateway = app.state.gateway
        return gateway.keys if gateway is not None else None

    def gateway() -> Gateway | None:
        current: Gateway | None = app.state.gateway
        return current

    # Starlette wraps in reverse: the last one added runs first.
    app.add_middleware(RunViewFastPath, gateway=gateway)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(
        AuthMiddleware,
        keys=keys,
        limiter=limiter,
        cookie_name=settings.cookie_name,
        throttle=throttle,
        trust_forwarded_for=settings.trust_forwarded_for,
    )
    return app
