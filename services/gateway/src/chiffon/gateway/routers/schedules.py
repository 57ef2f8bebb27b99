"""``/v1/schedules``: cron schedules, answered by the trigger service's commands (admin
to create, pause, resume or delete; viewer to read). Each schedule lists its next fire
times. Input is checked here first against the events' limits (422, nothing sent); the
trigger service checks the cron expression and the zone again and its refusals map as
the budgets' do."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path

from chiffon.commands.triggers import (
    CreateSchedule,
    DeleteSchedule,
    ListSchedules,
    PauseSchedule,
    ResumeSchedule,
)
from chiffon.core.telemetry import current_traceparent
from chiffon.events.triggers import TRIGGER_NAME_MAX_CHARS, TRIGGER_NAME_PATTERN
from chiffon.gateway.auth import Admin, Viewer
from chiffon.gateway.problems import NotFound
from chiffon.gateway.routers.common import READ, WRITE, optional_json, require_json
from chiffon.gateway.runtime import GatewayDep
from chiffon.gateway.schemas import (
    ScheduleCreate,
    ScheduleDeletedPublic,
    SchedulePause,
    SchedulePublic,
    SchedulesPublic,
)

router = APIRouter(prefix="/v1", tags=["schedules"])

Name = Annotated[
    str,
    Path(
        min_length=1,
        max_length=TRIGGER_NAME_MAX_CHARS,
        pattern=TRIGGER_NAME_PATTERN,
        description="The schedule's name",
    ),
]


@router.post(
    "/schedules",
    status_code=201,
    response_model=SchedulePublic,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Create a cron schedule",
)
async def create(body: ScheduleCreate, gw: GatewayDep, principal: Admin) -> SchedulePublic:
    """Start a run of ``workflow`` at every tick of ``cron`` in ``timezone``; each tick
    fires once, however many trigger replicas run."""
    result = await gw.send(
        CreateSchedule(
            actor=principal.actor,
            trace=current_traceparent(),
            schedule=body.name,
            workflow=body.workflow,
            version=body.version,
            cron=body.cron,
            timezone=body.timezone,
            inputs=dict(body.inputs),
            jitter_seconds=body.jitter_seconds,
            overlap=body.overlap,
            catchup_window_seconds=body.catchup_window_seconds,
        )
    )
    return SchedulePublic.model_validate(result)


@router.get("/schedules", response_model=SchedulesPublic, responses=READ, summary="List schedules")
async def list_all(gw: GatewayDep, principal: Viewer) -> SchedulesPublic:
    """Every schedule, by name, with its next fire times (none when paused)."""
    result = await gw.send(ListSchedules(actor=principal.actor, trace=current_traceparent()))
    return SchedulesPublic.model_validate(result)


@router.get(
    "/schedules/{name}", response_model=SchedulePublic, responses=READ, summary="Get a schedule"
)
async def get_one(name: Name, gw: GatewayDep, principal: Viewer) -> SchedulePublic:
    result = await gw.send(ListSchedules(actor=principal.actor, trace=current_traceparent()))
    for schedule in result.get("schedules") or []:
        if schedule.get("name") == name:
            return SchedulePublic.model_validate(schedule)
    raise NotFound(f"no schedule {name!r}")


@router.post(
    "/schedules/{name}/pause",
    response_model=SchedulePublic,
    responses=WRITE,
    dependencies=[Depends(optional_json)],
    summary="Pause a schedule",
)
async def pause(
    name: Name,
    gw: GatewayDep,
    principal: Admin,
    body: Annotated[SchedulePause | None, Body()] = None,
) -> SchedulePublic:
    """No tick fires until it is resumed (ticks missed meanwhile do not catch up)."""
    result = await gw.send(
        PauseSchedule(
            actor=principal.actor,
            trace=current_traceparent(),
            schedule=name,
            reason=body.reason if body else None,
        )
    )
    return SchedulePublic.model_validate(result)


@router.post(
    "/schedules/{name}/resume",
    response_model=SchedulePublic,
    responses=WRITE,
    summary="Resume a schedule",
)
async def resume(name: Name, gw: GatewayDep, principal: Admin) -> SchedulePublic:
    result = await gw.send(
        ResumeSchedule(actor=principal.actor, trace=current_traceparent(), schedule=name)
    )
    return SchedulePublic.model_validate(result)


@router.delete(
    "/schedules/{name}",
    response_model=ScheduleDeletedPublic,
    responses=WRITE,
    summary="Delete a schedule",
)
async def delete(name: Name, gw: GatewayDep, principal: Admin) -> ScheduleDeletedPublic:
    result = await gw.send(
        DeleteSchedule(actor=principal.actor, trace=current_traceparent(), schedule=name)
    )
    return ScheduleDeletedPublic.model_validate({"name": name, **result})
