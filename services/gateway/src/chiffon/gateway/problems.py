"""Problem details (RFC 9457): our own error types, and the one place they become HTTP.

Every error the API returns is ``application/problem+json`` with a stable ``type``
URI per kind of error, so a client branches on ``type``, never on ``detail``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from chiffon.core.logging import get_logger

log = get_logger(__name__)

PROBLEM_BASE = "https://chiffon.dev/problems/"
PROBLEM_JSON = "application/problem+json"


class ProblemError(BaseModel):
    """One validation error: where (a dotted path, and the line for YAML) and what."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(description="e.g. nodes.2.prompt or body.inputs.topic")
    line: int | None = Field(default=None, description="Line in the submitted document, when known")
    message: str


class ProblemDetails(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[PROBLEM_BASE + "not-found"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ProblemError] | None = None
    retry_after: int | None = Field(default=None, description="Seconds, on 429 and 503")
    trace_id: str | None = None


class Problem(Exception):
    """An error the API reports to its caller. Subclasses fix status, kind and title."""

    status: int = 400
    kind: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})
        self.extensions = extensions

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.kind


class BadRequest(Problem):
    status, kind, title = 400, "bad-request", "Bad request"


class MalformedBody(Problem):
    status, kind, title = 400, "malformed-body", "The request body could not be parsed"


class Unauthorized(Problem):
    status, kind, title = 401, "unauthorized", "An API key is required"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="chiffon"'}, **kwargs)


class Forbidden(Problem):
    status, kind, title = 403, "forbidden", "This key's role does not allow it"


class NotFound(Problem):
    status, kind, title = 404, "not-found", "Not found"


class MethodNotAllowed(Problem):
    status, kind, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(Problem):
    status, kind, title = 409, "conflict", "Conflict with the current state"


class IdempotencyConflict(Problem):
    status, kind, title = (
        409,
        "idempotency-key-reused",
        "Idempotency-Key reused with another request",
    )


class PayloadTooLarge(Problem):
    status, kind, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(Problem):
    status, kind, title = 415, "unsupported-media-type", "Unsupported content type"


class ValidationFailed(Problem):
    status, kind, title = 422, "validation-error", "The request is not valid"


class RateLimited(Problem):
    status, kind, title = 429, "rate-limited", "Too many requests"

    def __init__(self, retry_after: float, detail: str | None = None) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(detail, headers={"Retry-After": str(seconds)}, retry_after=seconds)


class Unavailable(Problem):
    status, kind, title = 503, "unavailable", "Service unavailable; retry later"

    def __init__(self, detail: str | None = None, retry_after: float = 1.0) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(detail, headers={"Retry-After": str(seconds)}, retry_after=seconds)


class Internal(Problem):
    status, kind, title = 500, "internal", "Internal error"


_BY_STATUS: dict[int, type[Problem]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    503: Unavailable,
}


def _trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def problem_body(problem: Problem, instance: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem.type_uri,
        "title": problem.title,
        "status": problem.status,
    }
    if problem.detail:
        body["detail"] = problem.detail
    if instance:
        body["instance"] = instance
    if problem.errors is not None:
        body["errors"] = problem.errors
    body.update(problem.extensions)
    trace_id = _trace_id()
    if trace_id:
        body["trace_id"] = trace_id
    return body


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem_body(problem, instance),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def problem_bytes(problem: Problem, instance: str | None = None) -> bytes:
    """The same document for pure ASGI middleware (no Request object at hand)."""
    return bytes(problem_response(problem, instance).body)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def validation_problem(error: RequestValidationError) -> Problem:
    issues = error.errors()
    if any(i.get("type") == "json_invalid" for i in issues):
        where = next(i for i in issues if i.get("type") == "json_invalid")
        ctx = where.get("ctx") or {}
        return MalformedBody(
            f"the body is not valid JSON: {ctx.get('error', 'parse error')}",
            errors=[
                {"path": "body", "line": None, "message": str(ctx.get("error", "invalid JSON"))}
            ],
        )
    errors = [
        {"path": _loc(i.get("loc", ())), "line": None, "message": str(i.get("msg", "invalid"))}
        for i in issues
    ]
    count = len(errors)
    return ValidationFailed(
        f"{count} problem{'s' if count != 1 else ''} with the request", errors=errors
    )


def install_problem_handlers(
    app: FastAPI, *, html_errors: Callable[[Request, Problem], Response] | None = None
) -> None:
    """Every error becomes problem+json (or an HTML page for the dashboard's pages)."""

    def respond(request: Request, problem: Problem) -> Response:
        if html_errors is not None and _wants_html(request):
            return html_errors(request, problem)
        return problem_response(problem, request.url.path)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return respond(request, validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        cls = _BY_STATUS.get(exc.status_code)
        if cls is None:
            problem: Problem = Problem(str(exc.detail))
            problem.status = exc.status_code
        elif cls in (Unauthorized, Unavailable):
            problem = cls(None)
        else:
            detail = exc.detail if isinstance(exc.detail, str) else None
            if cls is NotFound and detail == "Not Found":
                detail = f"nothing at {request.url.path}"
            if cls is MethodNotAllowed and detail == "Method Not Allowed":
                detail = f"{request.method} is not allowed on {request.url.path}"
            problem = cls(detail)
        if exc.headers:
            problem.headers.update(exc.headers)
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path;
            # a resource (say /v1/runs: GET and POST) may span several routes.
            problem.headers["Allow"] = ", ".join(allowed_methods(request))
        return respond(request, problem)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("gateway.unexpected_error", path=request.url.path, method=request.method)
        return respond(request, Internal("an unexpected error occurred; it has been logged"))


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route serves at this path (for ``Allow`` on a 405).

    Each method is asked of every route through ``matches``, Starlette's public test, a
    full match meaning path and method both fit. Reading ``route.methods`` instead found
    nothing once FastAPI wrapped included routers (``DELETE /v1/runs`` said ``Allow:``).
    """
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        for method in HTTP_METHODS:
            if method in methods:
                continue
            match, _ = route.matches({**request.scope, "method": method})
            if match == Match.FULL:
                methods.add(method)
    return [m for m in HTTP_METHODS if m in methods]


def _wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/v1/", "/openapi.json", "/docs")):
        return False
    return "text/html" in request.headers.get("accept", "")


# OpenAPI: the problem responses every route may give.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    titles = {
        400: "Malformed request",
        401: "Missing, unknown, expired or revoked API key",
        403: "The key's role does not allow this",
        404: "Not found",
        409: "Conflict",
        413: "Request body too large",
        415: "Unsupported content type",
        422: "Validation error",
        429: "Rate limited, or too many failed authentications (see Retry-After)",
        503: "Unavailable; retry (see Retry-After)",
    }
    return {
        status: {
            "description": titles.get(status, "Error"),
            "model": ProblemDetails,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }
