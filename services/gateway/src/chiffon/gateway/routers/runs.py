"""``/v1/runs``: start (with Idempotency-Key), fork, list, read, cancel, decide approvals."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from chiffon.commands import ApproveNode, CancelRun, StartRun
from chiffon.commands.model import ForkRun
from chiffon.core.telemetry import current_traceparent
from chiffon.events.limits import IDEMPOTENCY_KEY_MAX_CHARS, WORKFLOW_NAME_MAX_CHARS
from chiffon.events.runs import TERMINAL_STATUSES, TriggerRef
from chiffon.gateway.auth import Operator, Viewer
from chiffon.gateway.costs import run_cost, usd
from chiffon.gateway.problems import NotFound
from chiffon.gateway.routers.common import (
    READ,
    WRITE,
    optional_json,
    page_response,
    require_json,
)
from chiffon.gateway.runtime import GatewayDep, RunView, check_node_id, check_run_id
from chiffon.gateway.schemas import (
    ApprovalCreate,
    ApprovalRecorded,
    ApprovalsPublic,
    CancelAccepted,
    CancelCreate,
    ForkAccepted,
    ForkCreate,
    RunAccepted,
    RunCostPublic,
    RunCreate,
    RunsPublic,
    RunStatusName,
)
from chiffon.readmodels.queries import get_run, list_pending_approvals, list_runs
from chiffon.readmodels.views import RunPublic

router = APIRouter(prefix="/v1", tags=["runs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_CHARS,
        pattern=r"^[\x21-\x7e]+$",
        description="Same key and same body: the same run. Same key, other body: 409.",
    ),
]


@router.post(
    "/runs",
    status_code=202,
    response_model=RunAccepted,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Start a run",
)
async def start_run(
    body: RunCreate, gw: GatewayDep, principal: Operator, idempotency_key: IdempotencyKey = None
) -> Response:
    """Start a run of a registered workflow. Follow it at ``Location`` + ``/events``."""
    result = await gw.send(
        StartRun(
            actor=principal.actor,
            trace=current_traceparent(),
            idempotency_key=idempotency_key,
            workflow=body.workflow,
            version=body.version,
            inputs=body.inputs,
            trigger=TriggerRef(kind="api", id=principal.key.key_id),
        )
    )
    accepted = RunAccepted.model_validate(result)
    headers = {"Location": f"/v1/runs/{accepted.run_id}"}
    if not accepted.created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


@router.post(
    "/runs/{run_id}/fork",
    status_code=202,
    response_model=ForkAccepted,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Fork a run: what if a node ran with another model, prompt or inputs",
)
async def fork_run(
    run_id: str,
    body: ForkCreate,
    gw: GatewayDep,
    principal: Operator,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A new run that reuses the recorded outputs of every node the run completed before
    ``at`` first started (no model is called for them) and executes from ``at`` on, with
    ``at``'s model or prompt changed and ``inputs`` laid over the run's. 404: no such run;
    422: ``at`` is not in the workflow, or not an LLM node for a model or prompt, or the
    changed workflow or inputs are invalid; 409: ``at`` never started in the run."""
    check_run_id(run_id)
    result = await gw.send(
        ForkRun(
            actor=principal.actor,
            trace=current_traceparent(),
            idempotency_key=idempotency_key,
            run_id=run_id,
            at=body.at,
            model=body.model,
            prompt=body.prompt,
            inputs=body.inputs,
            trigger=TriggerRef(kind="api", id=principal.key.key_id),
        )
    )
    accepted = ForkAccepted.model_validate(result)
    headers = {"Location": f"/v1/runs/{accepted.run_id}"}
    if not accepted.created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


@router.get("/runs", response_model=RunsPublic, responses=READ, summary="List runs")
async def list_all(
    gw: GatewayDep,
    _: Viewer,
    request: Request,
    status: RunStatusName | None = None,
    workflow: Annotated[str | None, Query(max_length=WORKFLOW_NAME_MAX_CHARS)] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Runs, newest first; ``next_cursor`` (and a ``Link: rel=next`` header) pages on."""
    found, next_cursor = await gw.query(
        list_runs(gw.engine, status=status, workflow=workflow, cursor=cursor, limit=limit)
    )
    page = RunsPublic(runs=found, next_cursor=next_cursor)
    return page_response(request, page, next_cursor)


@router.get(
    "/runs/{run_id}",
    response_model=RunCostPublic,
    responses={304: {"description": "Not modified (If-None-Match)"}, **READ},
    summary="Get a run",
)
async def get_one(
    run_id: str,
    gw: GatewayDep,
    _: Viewer,
    request: Request,
) -> Response:
    """Status, inputs, outputs, error, every node with timings, approvals, tokens so far,
    and ``cost_usd``, the run's known spend ("0" when none).

    The ``ETag`` is the stream sequence of the last event folded into this view and the
    cost it shows.
    """
    check_run_id(run_id)
    view = gw.run_views.get(run_id)
    if view is None or view.needs_check(time.monotonic()):
        run: RunPublic | None = await gw.read_through(
            "run", run_id, lambda: get_run(gw.engine, run_id)
        )
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        cost = usd(await gw.query(run_cost(gw.engine, run_id)))
        # RunCostPublic's JSON without validating the run a second time: one more member.
        shown = run.model_dump_json()
        shown = shown[:-1] + ("," if shown != "{}" else "") + f'"cost_usd":"{cost}"}}'
        view = RunView(
            position=run.position,
            etag=f'"{run.position}-{cost}"',
            body=shown.encode(),
            ended=run.status in TERMINAL_STATUSES,
            cost=cost,
            checked_at=time.monotonic(),
        )
        gw.run_views.put(run_id, view)
    etag, body = view.etag, view.body
    if_none_match = request.headers.get("if-none-match")  # standard HTTP: not a parameter
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    responses=WRITE,
    dependencies=[Depends(optional_json)],
    summary="Cancel a run",
)
async def cancel(
    run_id: str,
    gw: GatewayDep,
    principal: Operator,
    body: Annotated[CancelCreate | None, Body()] = None,
) -> CancelAccepted:
    """Ask the run to stop; it records ``run.cancelled`` at its next safe point."""
    check_run_id(run_id)
    result = await gw.send(
        CancelRun(
            actor=principal.actor,
            trace=current_traceparent(),
            run_id=run_id,
            reason=body.reason if body else None,
        )
    )
    return CancelAccepted.model_validate(result)


@router.post(
    "/runs/{run_id}/approvals/{node_id}",
    response_model=ApprovalRecorded,
    responses=WRITE,
    dependencies=[Depends(require_json)],
    summary="Approve or reject a waiting approval",
)
async def decide(
    run_id: str, node_id: str, body: ApprovalCreate, gw: GatewayDep, principal: Operator
) -> ApprovalRecorded:
    """Record a decision on an approval node the run waits on (409 if it does not)."""
    check_run_id(run_id)
    check_node_id(node_id)
    result = await gw.send(
        ApproveNode(
            actor=principal.actor,
            trace=current_traceparent(),
            run_id=run_id,
            node_id=node_id,
            approve=body.approve,
            comment=body.comment,
        )
    )
    return ApprovalRecorded.model_validate(result)


@router.get(
    "/approvals", response_model=ApprovalsPublic, responses=READ, summary="Approvals waiting"
)
async def pending(gw: GatewayDep, _: Viewer) -> ApprovalsPublic:
    """Approval requests still waiting for a decision, oldest first."""
    return ApprovalsPublic(approvals=await gw.query(list_pending_approvals(gw.engine)))
