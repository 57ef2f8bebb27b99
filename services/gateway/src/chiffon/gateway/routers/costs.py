"""``/v1/costs``: spend reports from the cost service's read model (viewer+)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from chiffon.gateway.auth import Viewer
from chiffon.gateway.costs import BadRange, GroupBy, cost_groups, parse_range, report
from chiffon.gateway.problems import ValidationFailed
from chiffon.gateway.routers.common import READ
from chiffon.gateway.runtime import GatewayDep
from chiffon.gateway.schemas import CostsPublic

router = APIRouter(prefix="/v1", tags=["costs"])

BOUND_DOC = "An ISO date (2026-12-07: the whole UTC day) or date-time (UTC without an offset)"
From = Annotated[
    str | None, Query(alias="from", min_length=1, max_length=40, description=BOUND_DOC)
]
To = Annotated[str | None, Query(min_length=1, max_length=40, description=BOUND_DOC)]


@router.get("/costs", response_model=CostsPublic, responses=READ, summary="Spend report")
async def spend(
    gw: GatewayDep,
    _: Viewer,
    group_by: GroupBy,
    from_: From = None,
    to: To = None,
) -> CostsPublic:
    """Every priced LLM call in ``[from, to]`` summed per provider, model, workflow, API
    key or UTC day, most expensive first. Amounts are decimal strings; calls to a model
    with no known price count in ``calls`` and ``unknown_calls``, not in the amounts."""
    try:
        start, end = parse_range(from_, to)
    except BadRange as error:
        raise _bad(error.field, str(error)) from None
    groups = await gw.query(cost_groups(gw.engine, group_by, start=start, end=end))
    return CostsPublic.model_validate(report(group_by, groups))


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        message, errors=[{"path": f"query.{field}", "line": None, "message": message}]
    )
