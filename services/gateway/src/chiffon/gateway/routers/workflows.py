"""``/v1/workflows``: register (YAML or JSON), list, and read a version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from chiffon.commands import RegisterWorkflow
from chiffon.core.telemetry import current_traceparent
from chiffon.events.limits import WORKFLOW_MAX_BYTES
from chiffon.gateway.auth import Admin, Viewer
from chiffon.gateway.problems import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from chiffon.gateway.routers.common import READ, WRITE, is_json, media_type
from chiffon.gateway.runtime import GatewayDep, check_workflow_name
from chiffon.gateway.schemas import WorkflowRegistered, WorkflowsPublic
from chiffon.readmodels.queries import get_workflow, list_workflows
from chiffon.readmodels.views import WorkflowPublic

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"}


# PostgreSQL (the read models) cannot store NUL: a raw one in the source is refused here.
# An escape of one (YAML "\0", JSON "\u0000", an expression's '\x00' or "\N{NULL}") is
# text PostgreSQL stores; the loader refuses the NUL it parses to with the value's path and
# line (issue 16). Matching escapes in the text refused legal workflows whose text merely
# holds a backslash and a zero, and named no path.


def _line_of_nul(source: str) -> int | None:
    for number, line in enumerate(source.splitlines(), 1):
        if "\x00" in line:
            return number
    return None


@router.post(
    "",
    status_code=201,
    response_model=WorkflowRegistered,
    responses={
        200: {
            "model": WorkflowRegistered,
            "description": "This exact version was already registered",
        },
        **WRITE,
    },
    summary="Register a workflow version",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The workflow, as YAML (application/yaml) or JSON (application/json).",
            "content": {
                "application/yaml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def register_workflow(request: Request, gw: GatewayDep, principal: Admin) -> Response:
    """Validate and register a workflow version. 422 lists every error with its path and line.

    Versions are immutable: the same content again answers 200 (``created: false``);
    other content under a registered version is a 409.
    """
    media = media_type(request)
    if media in YAML_TYPES:
        source_format = "yaml"
    elif is_json(media):
        source_format = "json"
    else:
        raise UnsupportedMediaType(
            f"send the workflow as application/yaml or application/json (got {media or 'no Content-Type'})"
        )
    body = await request.body()
    # Source and canonical spec together must fit WORKFLOW_MAX_BYTES (the executor checks
    # that); a source alone over it can be refused before it travels.
    if len(body) > WORKFLOW_MAX_BYTES:
        raise PayloadTooLarge(
            f"a workflow is at most {WORKFLOW_MAX_BYTES} bytes; this one is {len(body)}"
        )
    try:
        source = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the workflow is not UTF-8 text: {error}") from None
    if "\x00" in source:
        raise ValidationFailed(
            "NUL characters are not allowed in a workflow",
            errors=[
                {
                    "path": "(source)",
                    "line": _line_of_nul(source),
                    "message": "contains a NUL character",
                }
            ],
        )
    result = await gw.send(
        RegisterWorkflow(
            actor=principal.actor,
            trace=current_traceparent(),
            source=source,
            source_format=source_format,  # type: ignore[arg-type]
        )
    )
    registered = WorkflowRegistered.model_validate(result)
    return JSONResponse(
        registered.model_dump(mode="json"),
        status_code=201 if registered.created else 200,
        headers={"Location": f"/v1/workflows/{registered.name}?version={registered.version}"},
    )


@router.get("", response_model=WorkflowsPublic, responses=READ, summary="List workflows")
async def list_all(gw: GatewayDep, _: Viewer) -> WorkflowsPublic:
    """Every workflow by name, with its latest version."""
    return WorkflowsPublic(workflows=await gw.query(list_workflows(gw.engine)))


@router.get(
    "/{name}", response_model=WorkflowPublic, responses=READ, summary="Get a workflow version"
)
async def get_one(
    name: str,
    gw: GatewayDep,
    _: Viewer,
    version: Annotated[
        int | None, Query(ge=1, le=2_147_483_647, description="Default: the latest")
    ] = None,
) -> Response:
    """A workflow version with its spec and its source as written."""
    check_workflow_name(name)
    found = await gw.query(get_workflow(gw.engine, name, version))
    if found is None:
        # Just registered? The event store knows before the read model does.
        latest = await gw.read_through(
            "workflow", name, lambda: get_workflow(gw.engine, name, None)
        )
        if latest is None:
            raise NotFound(f"no workflow named {name!r}")
        if version is not None and version != latest.version:
            listed = ", ".join(str(v) for v in latest.versions)
            raise NotFound(f"workflow {name!r} has no version {version} (versions: {listed})")
        found = latest
    return Response(found.model_dump_json(), media_type="application/json")
