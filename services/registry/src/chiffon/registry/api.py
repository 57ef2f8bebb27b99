"""The agent-facing HTTP API, compatible with configurable-agents' registry (extended).

Mapping only: wire format ↔ the application services. Every route but ``GET /health``
needs ``Authorization: Bearer <agent credential>``; every error is problem+json with a
4xx status for anything a caller sent (a body over 64 KiB is a 413 read no further).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import pydantic
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from chiffon.core.logging import get_logger
from chiffon.events import Actor
from chiffon.events.agents import AGENT_NAME_PATTERN, GpuInfo
from chiffon.eventstore import EventStoreError
from chiffon.registry.application import (
    AgentForbidden,
    AgentGone,
    Agents,
    AgentUnknown,
    CredentialRefused,
    Credentials,
    Heartbeat,
    aggregate_id_for,
)
from chiffon.registry.domain import AgentBoundElsewhere, AgentRefused, AgentState, RegisterAgent
from chiffon.registry.domain import CredentialState as Credential

log = get_logger(__name__)

PROBLEM_BASE = "https://chiffon.dev/problems/"
MAX_BODY_BYTES = 64 * 1024
AGENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
M = TypeVar("M", bound=BaseModel)


class Problem(Exception):
    status = 400
    kind = "bad-request"
    title = "Bad request"

    def __init__(
        self, detail: str | None = None, *, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors


class Unauthorized(Problem):
    status, kind, title = 401, "unauthorized", "An agent credential is required"


class Forbidden(Problem):
    status, kind, title = 403, "forbidden", "This agent credential may not do that"


class NotFound(Problem):
    status, kind, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, kind, title = 409, "conflict", "Conflict with the agent's state"


class PayloadTooLarge(Problem):
    status, kind, title = 413, "payload-too-large", "Request body too large"


class ValidationFailed(Problem):
    status, kind, title = 422, "validation-error", "The request is not valid"


class Unavailable(Problem):
    status, kind, title = 503, "unavailable", "Service unavailable; retry later"


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + problem.kind,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    headers = (
        {"WWW-Authenticate": 'Bearer realm="chiffon-registry"'} if problem.status == 401 else {}
    )
    if problem.status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse(
        body, status_code=problem.status, media_type="application/problem+json", headers=headers
    )


def _errors(error: pydantic.ValidationError | RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"path": ".".join(map(str, e["loc"])) or "body", "message": e["msg"]}
        for e in error.errors()
    ]


def install_problems(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc, request)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(ValidationFailed(errors=_errors(exc)), request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        problem = Problem(str(exc.detail))
        problem.status, problem.title = exc.status_code, str(exc.detail)
        problem.kind = {404: "not-found", 405: "method-not-allowed"}.get(
            exc.status_code, "bad-request"
        )
        return problem_response(problem, request)

    async def on_store(request: Request, exc: Exception) -> JSONResponse:
        log.warning("registry.store_unavailable", error=str(exc))
        return problem_response(Unavailable("the event store is unavailable"), request)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(EventStoreError, on_store)


# -- schemas --------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class GpuSpec(_Strict):
    name: StrictStr = Field(default="", max_length=200)
    vram_bytes: float = Field(default=0.0, ge=0)


class Resources(_Strict):
    cpu_cores: float = Field(default=0.0, ge=0)
    memory_bytes: float = Field(default=0.0, ge=0)
    gpus: list[GpuSpec] = Field(default_factory=list, max_length=64)


class AgentRegister(_Strict):
    agent_id: StrictStr = Field(pattern=AGENT_ID_PATTERN)
    agent_name: StrictStr = Field(pattern=AGENT_NAME_PATTERN)
    host: StrictStr = Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f\s]+$")
    port: int = Field(ge=1, le=65_535)
    ttl_seconds: int = Field(default=60, ge=5, le=3600)
    metadata: StrictStr | None = Field(default=None, max_length=4096)
    grpc_address: StrictStr | None = Field(
        default=None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f\s]+$"
    )
    capabilities: list[Annotated[StrictStr, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]] = Field(
        default_factory=list, max_length=64
    )
    labels: dict[
        Annotated[StrictStr, Field(min_length=1, max_length=63)],
        Annotated[StrictStr, Field(max_length=255)],
    ] = Field(default_factory=dict, max_length=64)
    resources: Resources = Field(default_factory=Resources)
    max_concurrency: int = Field(default=4, ge=1, le=10_000)
    instance: StrictStr | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$"
    )
    """The agent process's id, random at its start (optional: configurable-agents'
    clients send none): the same body from a new instance is a restart, recorded."""


class GpuLive(_Strict):
    utilization: float = Field(default=0.0, ge=0, le=1)
    free_vram_bytes: float = Field(default=0.0, ge=0)


class HeartbeatBody(_Strict):
    load: list[float] | None = Field(default=None, min_length=3, max_length=3)
    free_memory_bytes: float | None = Field(default=None, ge=0)
    running_tasks: int | None = Field(default=None, ge=0, le=1_000_000)
    gpus: list[GpuLive] | None = Field(default=None, max_length=64)


# -- dependencies -----------------------------------------------------------------------


def _services(request: Request) -> tuple[Agents, Credentials]:
    services = getattr(request.app.state, "registry", None)
    if services is None:
        raise Unavailable("the registry is starting")
    agents, credentials = services
    assert isinstance(agents, Agents) and isinstance(credentials, Credentials)
    return agents, credentials


async def authenticated(request: Request) -> Credential:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <agent credential>")
    _, credentials = _services(request)
    try:
        return await credentials.verify(token.strip())
    except CredentialRefused as refused:
        if refused.revoked:
            raise Forbidden(str(refused)) from None
        raise Unauthorized(str(refused)) from None


CredentialDep = Annotated[Credential, Depends(authenticated)]


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"at most {MAX_BODY_BYTES} bytes")
    return bytes(body)


def parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as error:
        raise ValidationFailed(errors=_errors(error)) from None


def _iso(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, UTC).isoformat() if at is not None else None


def agent_info(state: AgentState, beat: Heartbeat | None, agents: Agents) -> dict[str, Any]:
    alive = state.status == "online" and not agents.lapsed(state, beat, agents.wall())
    return {
        "agent_id": state.agent_id_chosen or state.agent_id,
        "agent_name": state.name,
        "host": state.host,
        "port": state.port,
        "is_alive": alive,
        "last_heartbeat": _iso(beat.at if beat else None),
        "registered_at": state.registered_at.isoformat() if state.registered_at else None,
        "ttl_seconds": state.ttl_seconds,
        "metadata": state.metadata,
        "grpc_address": state.address,
        "capabilities": list(state.capabilities),
        "labels": dict(state.labels),
        "resources": {
            "cpu_cores": state.resources.get("cpu_cores", 0.0),
            "memory_bytes": state.resources.get("memory_bytes", 0.0),
            "gpus": [gpu.model_dump() for gpu in state.gpus],
        },
        "max_concurrency": state.max_concurrency,
        "status": state.status,
        "live": dict(beat.live) if beat and beat.live else None,
    }


# -- routes -----------------------------------------------------------------------------

router = APIRouter(tags=["agents"])


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    agents, _ = _services(request)
    known = [s for s in agents.view.agents.values() if s.status != "deregistered"]
    return {
        "status": "healthy",
        "registered_agents": len(known),
        "active_agents": sum(1 for s in known if s.status == "online"),
    }


@router.post("/agents/register")
async def register(request: Request, credential: CredentialDep) -> dict[str, Any]:
    agents, _ = _services(request)
    body = parse(AgentRegister, await read_body(request))
    if body.agent_name != credential.name:
        raise Forbidden(
            f"this credential is for agent name {credential.name!r}, not {body.agent_name!r}"
        )
    aggregate_id = aggregate_id_for(body.agent_id)
    gpus = tuple(GpuInfo(name=g.name, vram_bytes=g.vram_bytes) for g in body.resources.gpus)
    resources = {
        "cpu_cores": body.resources.cpu_cores,
        "memory_bytes": body.resources.memory_bytes,
        "gpu_count": float(len(gpus)),
        "gpu_vram_bytes": max((g.vram_bytes for g in gpus), default=0.0),
    }
    command = RegisterAgent(
        agent_id=aggregate_id,
        name=body.agent_name,
        host=body.host,
        address=body.grpc_address or f"{body.host}:{body.port}",
        capabilities=tuple(body.capabilities),
        resources=resources,
        max_concurrency=body.max_concurrency,
        agent_id_chosen=body.agent_id if body.agent_id != aggregate_id else None,
        port=body.port,
        labels=dict(body.labels),
        gpus=gpus,
        metadata=body.metadata,
        ttl_seconds=body.ttl_seconds,
        credential_id=credential.credential_id,
        instance=body.instance,
    )
    actor = Actor(kind="service", id=f"agent:{credential.credential_id}", name=credential.name)
    try:
        state = await agents.register(command, credential, actor)
    except AgentBoundElsewhere as bound:
        raise Forbidden(str(bound)) from None
    return agent_info(state, await agents.heartbeat_of(aggregate_id), agents)


@router.post("/agents/{agent_id}/heartbeat")
async def heartbeat(request: Request, agent_id: str, credential: CredentialDep) -> dict[str, Any]:
    agents, _ = _services(request)
    raw = await read_body(request)
    live = parse(HeartbeatBody, raw).model_dump(exclude_none=True) if raw.strip() else None
    try:
        beat = await agents.heartbeat(_aggregate(agent_id), credential, live)
    except AgentUnknown:
        raise NotFound(f"no agent {agent_id!r} is registered") from None
    except AgentGone:
        raise Conflict(f"agent {agent_id!r} was deregistered: register again") from None
    except AgentForbidden:
        raise Forbidden(f"agent {agent_id!r} is registered with another credential") from None
    return {"status": "ok", "last_heartbeat": _iso(beat.at)}


@router.get("/agents")
async def list_agents(
    request: Request, credential: CredentialDep, include_dead: bool = False
) -> list[dict[str, Any]]:
    agents, _ = _services(request)
    states = list(agents.view.agents.values())
    beats = await asyncio.gather(*(agents.heartbeat_of(s.agent_id) for s in states))
    infos = [agent_info(state, beat, agents) for state, beat in zip(states, beats, strict=True)]
    return [info for info in infos if include_dead or info["is_alive"]]


@router.get("/agents/{agent_id}")
async def get_agent(request: Request, agent_id: str, credential: CredentialDep) -> dict[str, Any]:
    agents, _ = _services(request)
    state = await agents.load(_aggregate(agent_id))
    if not state.known:
        raise NotFound(f"no agent {agent_id!r} is registered")
    return agent_info(state, await agents.heartbeat_of(state.agent_id), agents)


@router.delete("/agents/{agent_id}")
async def delete_agent(
    request: Request, agent_id: str, credential: CredentialDep
) -> dict[str, Any]:
    agents, _ = _services(request)
    try:
        await agents.deregister(_aggregate(agent_id), credential)
    except AgentUnknown:
        raise NotFound(f"no agent {agent_id!r} is registered") from None
    except AgentGone:
        raise Conflict(f"agent {agent_id!r} was deregistered already") from None
    except AgentForbidden:
        raise Forbidden(f"agent {agent_id!r} is registered with another credential") from None
    except AgentRefused as refused:
        raise Conflict(str(refused)) from None
    return {"status": "deleted", "agent_id": agent_id}


def _aggregate(agent_id: str) -> str:
    if not _AGENT_ID.match(agent_id):
        raise NotFound(f"no agent {agent_id!r} is registered")
    return aggregate_id_for(agent_id)


def create_app() -> FastAPI:
    # A span per request (an agent's registration continues its caller's trace), none
    # per dependency, and no FastAPI metrics or logs (Chiffon logs with structlog).
    app = FastAPI(
        title="chiffon-registry",
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": True, "operation_spans": False, "metrics": False, "logs": False},
    )
    install_problems(app)
    app.include_router(router)
    return app
