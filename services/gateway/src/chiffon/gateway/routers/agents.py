"""``/v1/agents``: the agents the registry knows (viewer+), what capacity is free."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from chiffon.commands.model import (
    IssueAgentCredential,
    ListAgentCredentials,
    RevokeAgentCredential,
)
from chiffon.core.telemetry import current_traceparent
from chiffon.gateway.agents import (
    AGENT_ID,
    CAPABILITY_MAX_CHARS,
    available_capacity,
    get_agent,
    list_agents,
    public_with_live,
)
from chiffon.gateway.auth import Admin, Viewer
from chiffon.gateway.problems import NotFound
from chiffon.gateway.routers.common import READ, WRITE, page_response, require_json
from chiffon.gateway.runtime import GatewayDep
from chiffon.gateway.schemas import (
    AgentCredentialCreate,
    AgentCredentialCreated,
    AgentCredentialRevoked,
    AgentCredentialsPublic,
    AgentPublic,
    AgentsPublic,
    AgentStatusName,
    CapacityPublic,
)

router = APIRouter(prefix="/v1", tags=["agents"])
CREDENTIAL_ID = re.compile(r"[0-9a-f]{32}")

Capability = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=CAPABILITY_MAX_CHARS,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Only agents with this capability (e.g. shell, gpu)",
    ),
]


@router.get("/agents", response_model=AgentsPublic, responses=READ, summary="List agents")
async def list_all(
    gw: GatewayDep,
    _: Viewer,
    request: Request,
    status: AgentStatusName | None = None,
    capability: Capability = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Agents by id; ``next_cursor`` (and a ``Link: rel=next`` header) pages on."""
    found, next_cursor = await gw.query(
        list_agents(gw.engine, status=status, capability=capability, cursor=cursor, limit=limit)
    )
    shown = await public_with_live(gw.store, gw.settings.namespace, found)
    page = AgentsPublic(
        agents=[AgentPublic.model_validate(a) for a in shown], next_cursor=next_cursor
    )
    return page_response(request, page, next_cursor)


@router.get(
    "/agents/available-capacity",
    response_model=CapacityPublic,
    responses=READ,
    summary="Capacity for a task",
)
async def capacity(
    gw: GatewayDep,
    _: Viewer,
    capability: Capability = None,
    cpu_cores: Annotated[float | None, Query(ge=0, le=100_000)] = None,
    gpu_vram_gb: Annotated[float | None, Query(ge=0, le=100_000)] = None,
) -> CapacityPublic:
    """The online agents that could take a task needing ``capability``, ``cpu_cores``
    and one GPU with ``gpu_vram_gb`` GiB of memory, and their totals."""
    found = await gw.query(
        available_capacity(
            gw.engine, capability=capability, cpu_cores=cpu_cores, gpu_vram_gb=gpu_vram_gb
        )
    )
    return CapacityPublic.model_validate(found)


@router.post(
    "/agents/credentials",
    status_code=201,
    response_model=AgentCredentialCreated,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Issue an agent credential",
)
async def create_credential(
    body: AgentCredentialCreate, gw: GatewayDep, principal: Admin
) -> JSONResponse:
    """A credential for the agent named ``name`` (it registers and heartbeats with it).
    The response holds the secret: it is never shown again."""
    result = await gw.send(
        IssueAgentCredential(actor=principal.actor, trace=current_traceparent(), name=body.name)
    )
    created = AgentCredentialCreated.model_validate(result)
    return JSONResponse(
        created.model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/v1/agents/credentials/{created.id}", "Cache-Control": "no-store"},
    )


@router.get(
    "/agents/credentials",
    response_model=AgentCredentialsPublic,
    responses=READ,
    summary="List agent credentials",
)
async def list_credentials(gw: GatewayDep, principal: Admin) -> AgentCredentialsPublic:
    """Every agent credential ever issued (revoked ones too), without secrets."""
    result = await gw.send(ListAgentCredentials(actor=principal.actor, trace=current_traceparent()))
    return AgentCredentialsPublic.model_validate(result)


@router.delete(
    "/agents/credentials/{credential_id}",
    response_model=AgentCredentialRevoked,
    responses=WRITE,
    summary="Revoke an agent credential",
)
async def revoke_credential(
    credential_id: str, gw: GatewayDep, principal: Admin
) -> AgentCredentialRevoked:
    """The agent can no longer register or heartbeat with it."""
    if not CREDENTIAL_ID.fullmatch(credential_id):
        raise NotFound(f"no agent credential {credential_id[:200]!r}")
    result = await gw.send(
        RevokeAgentCredential(
            actor=principal.actor, trace=current_traceparent(), credential_id=credential_id
        )
    )
    return AgentCredentialRevoked.model_validate(result)


@router.get(
    "/agents/{agent_id}", response_model=AgentPublic, responses=READ, summary="Get an agent"
)
async def get_one(agent_id: str, gw: GatewayDep, _: Viewer) -> AgentPublic:
    """One agent: status, capabilities, resources, labels."""
    if not AGENT_ID.fullmatch(agent_id):
        raise NotFound(f"no agent {agent_id[:200]!r}")
    found = await gw.query(get_agent(gw.engine, agent_id))
    if found is None:
        raise NotFound(f"no agent {agent_id!r}")
    (shown,) = await public_with_live(gw.store, gw.settings.namespace, [found])
    return AgentPublic.model_validate(shown)
