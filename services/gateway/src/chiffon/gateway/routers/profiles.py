"""Profiles: where a run's time went, per node and across runs; run comparison (viewer+).

A comparison lives at ``/v1/runs/{a}/compare/{b}``, not ``/v1/runs/compare?a=&b=``:
the runs router, included first, answers ``GET /v1/runs/{run_id}`` and would take
``compare`` for a run id (a 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from chiffon.events.limits import WORKFLOW_NAME_MAX_CHARS, WORKFLOW_NAME_PATTERN
from chiffon.gateway.auth import Viewer
from chiffon.gateway.comparison import ComparisonPublic, RunFacts, compare_runs, node_outputs
from chiffon.gateway.problems import NotFound
from chiffon.gateway.profile_reads import (
    LAST_MAX,
    last_finished_runs,
    many_run_events,
    node_costs,
    run_events,
)
from chiffon.gateway.profiles import (
    RunProfilePublic,
    WorkflowProfilePublic,
    profile_run,
    profile_workflow,
)
from chiffon.gateway.routers.common import READ
from chiffon.gateway.runtime import GatewayDep, check_run_id
from chiffon.readmodels.queries import get_workflow

router = APIRouter(prefix="/v1", tags=["profiles"])


@router.get(
    "/runs/{run_id}/profile",
    response_model=RunProfilePublic,
    responses=READ,
    summary="Where a run's time went",
)
async def run_profile(run_id: str, gw: GatewayDep, _: Viewer) -> RunProfilePublic:
    """Per node and per attempt: wall time, share of the run, time waiting for the model,
    an agent or a person against Chiffon's own, retries; ``bottleneck`` names the node
    that took more than half of the run, if one did. A running run is profiled up to its
    last event."""
    check_run_id(run_id)
    return profile_run(run_id, await gw.query(run_events(gw, run_id)))


@router.get(
    "/profiles",
    response_model=WorkflowProfilePublic,
    responses=READ,
    summary="Node latencies across a workflow's runs",
)
async def workflow_profile(
    gw: GatewayDep,
    _: Viewer,
    workflow: Annotated[
        str,
        Query(
            min_length=1,
            max_length=WORKFLOW_NAME_MAX_CHARS,
            pattern=WORKFLOW_NAME_PATTERN,
            description="The workflow's name",
        ),
    ],
    last: Annotated[
        int, Query(ge=1, le=LAST_MAX, description="Profile this many of its last finished runs")
    ] = 100,
) -> WorkflowProfilePublic:
    """p50, p95 and p99 per node (wall time, model, agent and own time, share of the
    run) over the workflow's ``last`` most recent finished runs, every version."""
    if await gw.query(get_workflow(gw.engine, workflow)) is None:
        raise NotFound(f"no workflow named {workflow!r}")
    run_ids = await gw.query(last_finished_runs(gw.engine, workflow, last))
    histories = await many_run_events(gw, run_ids)  # a deadline of its own
    profiles = [
        profile_run(run_id, events) for run_id, events in zip(run_ids, histories, strict=True)
    ]
    return profile_workflow(workflow, last, profiles)


@router.get(
    "/runs/{run_id}/compare/{other_id}",
    response_model=ComparisonPublic,
    responses=READ,
    summary="Two runs side by side",
)
async def compare(run_id: str, other_id: str, gw: GatewayDep, _: Viewer) -> ComparisonPublic:
    """Run ``run_id`` (a) against ``other_id`` (b), node by node: outputs, spend and wall
    time, with b's difference from a."""
    sides = []
    for one in (check_run_id(run_id), check_run_id(other_id)):
        events = await gw.query(run_events(gw, one))
        costs = await gw.query(node_costs(gw.engine, one))
        sides.append(RunFacts(profile_run(one, events), node_outputs(events), costs))
    return compare_runs(sides[0], sides[1])
