"""``/v1/triggers``: webhook triggers, answered by the trigger service's commands (admin
to create or change, operator to replay deliveries, viewer to read).

Input is checked here first against the events' own limits (a name is a slug, a secret
or mapping holds no control character, nothing is longer than its event field), so a bad
request is a 422 that never reaches the trigger service; the service checks again and
its refusals map as the budgets' do (invalid 422, not_found 404, conflict 409,
unavailable 503).

Secrets are write-only: they go out in the command on their way to being encrypted and
are never in an answer (the answer models have no field for one) nor in a log line.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path

from chiffon.commands.triggers import (
    CreateTrigger,
    DisableTrigger,
    EnableTrigger,
    ListTriggers,
    ReplayDeliveries,
    SetTriggerSecrets,
    ShowTrigger,
)
from chiffon.core.telemetry import current_traceparent
from chiffon.events.triggers import TRIGGER_NAME_MAX_CHARS, TRIGGER_NAME_PATTERN
from chiffon.gateway.auth import Admin, Operator, Viewer
from chiffon.gateway.routers.common import READ, WRITE, optional_json, require_json
from chiffon.gateway.runtime import GatewayDep
from chiffon.gateway.schemas import (
    ReplayPublic,
    TriggerCreate,
    TriggerDetailPublic,
    TriggerDisable,
    TriggerPublic,
    TriggerReplay,
    TriggerSecretsPut,
    TriggersPublic,
)
from chiffon.gateway.settings import GatewaySettings

router = APIRouter(prefix="/v1", tags=["triggers"])

Name = Annotated[
    str,
    Path(
        min_length=1,
        max_length=TRIGGER_NAME_MAX_CHARS,
        pattern=TRIGGER_NAME_PATTERN,
        description="The trigger's name",
    ),
]


def public(settings: GatewaySettings, answer: dict[str, Any]) -> dict[str, Any]:
    """The trigger service's answer with the hook's absolute URL (from this gateway's
    ``trigger_public_url``); the answer models keep only their own fields."""
    path = str(answer.get("hook_path") or f"/hooks/{answer.get('name', '')}")
    return {**answer, "hook_path": path, "hook_url": settings.hook_url(path)}


@router.post(
    "/triggers",
    status_code=201,
    response_model=TriggerPublic,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Create a webhook trigger",
)
async def create(body: TriggerCreate, gw: GatewayDep, principal: Admin) -> TriggerPublic:
    """A named trigger: deliveries posted to its ``hook_url`` are verified by ``scheme``
    with its secrets, stored once per delivery id, and start a run of ``workflow`` with
    inputs mapped from the delivery. The secrets are write-only."""
    reply: dict[str, Any] | None = None
    if body.reply is not None:
        reply = {"output": body.reply.output}
        if body.reply.token is not None:
            reply["token"] = body.reply.token.get_secret_value()
    result = await gw.send(
        CreateTrigger(
            actor=principal.actor,
            trace=current_traceparent(),
            trigger=body.name,
            workflow=body.workflow,
            version=body.version,
            scheme=body.scheme,
            secrets=body.secret_values(),
            verify_token=(
                body.verify_token.get_secret_value() if body.verify_token is not None else None
            ),
            inputs=dict(body.inputs),
            reply=reply,
        )
    )
    return TriggerPublic.model_validate(public(gw.settings, result))


@router.get("/triggers", response_model=TriggersPublic, responses=READ, summary="List triggers")
async def list_all(gw: GatewayDep, principal: Viewer) -> TriggersPublic:
    """Every trigger, by name, with its delivery count and last delivery."""
    result = await gw.send(ListTriggers(actor=principal.actor, trace=current_traceparent()))
    found = [public(gw.settings, t) for t in result.get("triggers") or []]
    return TriggersPublic.model_validate({"triggers": found})


@router.get(
    "/triggers/{name}",
    response_model=TriggerDetailPublic,
    responses=READ,
    summary="Get a trigger",
)
async def get_one(name: Name, gw: GatewayDep, principal: Viewer) -> TriggerDetailPublic:
    """The trigger and its recent deliveries (newest first, at most 20)."""
    result = await gw.send(
        ShowTrigger(actor=principal.actor, trace=current_traceparent(), trigger=name)
    )
    return TriggerDetailPublic.model_validate(public(gw.settings, result))


@router.post(
    "/triggers/{name}/disable",
    response_model=TriggerPublic,
    responses=WRITE,
    dependencies=[Depends(optional_json)],
    summary="Disable a trigger",
)
async def disable(
    name: Name,
    gw: GatewayDep,
    principal: Admin,
    body: Annotated[TriggerDisable | None, Body()] = None,
) -> TriggerPublic:
    """Deliveries to it are refused (404) until it is enabled again."""
    result = await gw.send(
        DisableTrigger(
            actor=principal.actor,
            trace=current_traceparent(),
            trigger=name,
            reason=body.reason if body else None,
        )
    )
    return TriggerPublic.model_validate(public(gw.settings, result))


@router.post(
    "/triggers/{name}/enable",
    response_model=TriggerPublic,
    responses=WRITE,
    summary="Enable a trigger",
)
async def enable(name: Name, gw: GatewayDep, principal: Admin) -> TriggerPublic:
    result = await gw.send(
        EnableTrigger(actor=principal.actor, trace=current_traceparent(), trigger=name)
    )
    return TriggerPublic.model_validate(public(gw.settings, result))


@router.put(
    "/triggers/{name}/secrets",
    response_model=TriggerPublic,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Replace a trigger's secrets",
)
async def put_secrets(
    name: Name, body: TriggerSecretsPut, gw: GatewayDep, principal: Admin
) -> TriggerPublic:
    """Rotation: the new secret first, the old one kept until every sender has the new
    one. Write-only: the answer says how many are active, never which."""
    result = await gw.send(
        SetTriggerSecrets(
            actor=principal.actor,
            trace=current_traceparent(),
            trigger=name,
            secrets=[s.get_secret_value() for s in body.secrets],
        )
    )
    return TriggerPublic.model_validate(public(gw.settings, result))


@router.post(
    "/triggers/{name}/replay",
    response_model=ReplayPublic,
    responses=WRITE,
    dependencies=[Depends(optional_json)],
    summary="Replay stored deliveries",
)
async def replay(
    name: Name,
    gw: GatewayDep,
    principal: Operator,
    body: Annotated[TriggerReplay | None, Body()] = None,
) -> ReplayPublic:
    """A new run for every stored delivery received in ``[from, to)``, against
    ``workflow``/``version`` when given (else the trigger's). Replaying the same range
    against the same version again starts nothing new."""
    wanted = body or TriggerReplay()
    result = await gw.send(
        ReplayDeliveries.model_validate(
            {
                "actor": principal.actor,
                "trace": current_traceparent(),
                "trigger": name,
                "from": wanted.from_,
                "to": wanted.to,
                "workflow": wanted.workflow,
                "version": wanted.version,
            }
        )
    )
    return ReplayPublic.model_validate(result)
