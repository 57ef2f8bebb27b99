"""``/v1/budgets``: spend limits per scope, answered by the cost service's budget
commands (admin to change, viewer to read). Every change is an event with its actor.

Input is checked here first (scope, id, amounts, soft above hard), so a bad request is a
422 that never reaches the cost service and stores nothing; the cost service checks
again (the time zone, against its own zone database) and its refusals are 422 too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from chiffon.commands.model import ListBudgets, RemoveBudget, SetBudget
from chiffon.core.telemetry import current_traceparent
from chiffon.events.costs import BUDGET_SCOPES, BudgetScope
from chiffon.gateway.auth import Admin, Viewer
from chiffon.gateway.problems import ValidationFailed
from chiffon.gateway.routers.common import READ, WRITE, require_json
from chiffon.gateway.runtime import RUN_ID, WORKFLOW_NAME, GatewayDep
from chiffon.gateway.schemas import (
    BudgetPublic,
    BudgetPut,
    BudgetRemovedPublic,
    BudgetsPublic,
)

router = APIRouter(prefix="/v1", tags=["budgets"])
Scope = Annotated[BudgetScope, Path(description="global, workflow, key or run")]
ScopeId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9_-]{1,128}$",
        description="global for the global budget, else a workflow name, key id or run id",
    ),
]
TIMEZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")


def _bad(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[{"path": path, "line": None, "message": message}])


def check_scope(scope: str, scope_id: str) -> Any:
    """The scope and its id as the budget commands take them (422 otherwise)."""
    if scope not in BUDGET_SCOPES:
        raise _bad("path.scope", f"scope must be one of {', '.join(BUDGET_SCOPES)}")
    if scope == "global":
        if scope_id != "global":
            raise _bad("path.id", "the global budget's id is global")
    elif scope == "workflow":
        if not WORKFLOW_NAME.fullmatch(scope_id):
            raise _bad("path.id", f"{scope_id[:80]!r} is not a workflow name")
    elif not RUN_ID.fullmatch(scope_id):
        raise _bad("path.id", f"{scope_id[:80]!r} is not a {'key' if scope == 'key' else 'run'} id")
    return scope


@router.put(
    "/budgets/{scope}/{id}",
    response_model=BudgetPublic,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Set a budget",
)
async def put(
    scope: Scope, id: ScopeId, body: BudgetPut, gw: GatewayDep, principal: Admin
) -> BudgetPublic:
    """Create or change the budget of ``scope`` (global, workflow, key, run) and ``id``
    (``global`` for the global one): a hard limit calls may not cross (they fall back to
    a free model or pause), a soft one that raises an alert; per day or month (calendar
    aligned in ``timezone``) or for the scope's lifetime."""
    checked = check_scope(scope, id)
    if body.hard_usd is not None and body.soft_usd is not None and body.soft_usd > body.hard_usd:
        raise _bad("body.soft_usd", "soft_usd must not be above hard_usd")
    if not TIMEZONE.fullmatch(body.timezone):
        raise _bad("body.timezone", f"{body.timezone[:64]!r} is not an IANA time zone name")
    result = await gw.send(
        SetBudget(
            actor=principal.actor,
            trace=current_traceparent(),
            scope=checked,
            scope_id=id,
            period=body.period,
            hard_usd=body.hard_usd,
            soft_usd=body.soft_usd,
            timezone=body.timezone,
        )
    )
    return BudgetPublic.model_validate(result)


@router.get("/budgets", response_model=BudgetsPublic, responses=READ, summary="List budgets")
async def list_all(gw: GatewayDep, principal: Viewer) -> BudgetsPublic:
    """Every budget with its spend and reservations in the current period."""
    result = await gw.send(ListBudgets(actor=principal.actor, trace=current_traceparent()))
    return BudgetsPublic.model_validate(result)


@router.delete(
    "/budgets/{scope}/{id}",
    response_model=BudgetRemovedPublic,
    responses=WRITE,
    summary="Remove a budget",
)
async def remove(
    scope: Scope, id: ScopeId, gw: GatewayDep, principal: Admin
) -> BudgetRemovedPublic:
    """The scope's spend is no longer limited (paused runs waiting on it resume)."""
    checked = check_scope(scope, id)
    result = await gw.send(
        RemoveBudget(actor=principal.actor, trace=current_traceparent(), scope=checked, scope_id=id)
    )
    return BudgetRemovedPublic.model_validate(result)
