"""The audit API (viewer+): a run's audit record, the event search, failures.

Filters are checked here against the limits the events are held to: a value no event
can hold (too long, a control character, a malformed run id) is a 400 or 422 before
any query, and every other value is compared exactly, so a wildcard or a piece of SQL
finds nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict

from chiffon.audit.gitexport import known_prices
from chiffon.audit.record import audit_record
from chiffon.audit.render import to_html, to_text
from chiffon.audit.search import (
    CONTEXTS,
    MAX_LIMIT,
    AuditFilter,
    InvalidCursor,
    decode_cursor,
    failures,
    search_events,
)
from chiffon.audit.tables import AGENT_ID_MAX_CHARS, EVENT_TYPE_MAX_CHARS
from chiffon.events.limits import ACTOR_LABEL_MAX_CHARS
from chiffon.eventstore import AggregateKey
from chiffon.gateway.auth import Viewer
from chiffon.gateway.costs import BadRange, parse_bound
from chiffon.gateway.problems import NotFound, Unavailable, ValidationFailed, problem_responses
from chiffon.gateway.routers.common import READ
from chiffon.gateway.runtime import RUN_ID, WORKFLOW_NAME, GatewayDep, check_run_id

router = APIRouter(prefix="/v1", tags=["audit"])

# A report's HTML is the events' text: it may load nothing and run nothing.
HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

SINCE = re.compile(r"([0-9]{1,6})([mhdw])")
SINCE_UNITS = {
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
SINCE_MAX = timedelta(days=3660)  # ten years: the oldest failure a report looks back to

BOUND_DOC = "An ISO date (2026-12-07: the whole UTC day) or date-time (UTC without an offset)"


class AuditEntryPublic(BaseModel):
    """One event of the run. The keys below are in every entry (null where they do not
    apply); each event type adds its own (docs/audit.md)."""

    model_config = ConfigDict(extra="allow")

    type: str
    at: AwareDatetime
    actor: str
    node_id: str | None
    model: str | None
    tokens: int | None
    cost_usd: str | None
    event_id: str


class AuditRecordPublic(BaseModel):
    run_id: str
    timeline: list[AuditEntryPublic]


class AuditEventPublic(BaseModel):
    sequence: int  # in its stream (``context``)
    event_id: str
    type: str
    run_id: str | None  # null for an event of another stream than RUNS
    actor: str
    at: AwareDatetime
    node_id: str | None
    workflow: str | None
    agent_id: str | None
    error_type: str | None
    context: str  # the stream: RUNS, KEYS, COSTS, AGENTS, TRIGGERS, WORKFLOWS
    aggregate: str  # run, apikey, budget, agent, agent_credential, trigger, schedule, workflow
    aggregate_id: str
    name: str | None  # the key's, agent's, trigger's, schedule's or workflow's name
    version: int | None  # the workflow version it registers or names


class AuditEventsPublic(BaseModel):
    events: list[AuditEventPublic]
    next_cursor: str | None


class FailureGroupPublic(BaseModel):
    error_type: str
    workflow: str | None
    agent_id: str | None
    failed_runs: int
    failed_nodes: int
    first_at: AwareDatetime
    last_at: AwareDatetime
    nodes: list[str]
    recent_runs: list[str]
    last_message: str | None


class FailuresPublic(BaseModel):
    since: AwareDatetime
    groups: list[FailureGroupPublic]


def _bad(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        message, errors=[{"path": f"query.{field}", "line": None, "message": message}]
    )


def _text(field: str, value: str | None) -> str | None:
    """A filter as given, refused when it holds a control character (no event's actor,
    type or agent does, and PostgreSQL cannot compare a NUL)."""
    if value is None:
        return None
    if not value.isprintable():
        raise _bad(field, f"{field} holds a control character")
    return value


@router.get(
    "/runs/{run_id}/audit",
    response_model=AuditRecordPublic,
    responses={
        200: {
            "description": "The run's audit record: `{run_id, timeline: [...]}` as JSON, or "
            "as text or a self-contained HTML report (`format`)",
            "content": {
                "text/html": {"schema": {"type": "string"}},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        **READ,
    },
    summary="A run's audit record",
)
async def run_audit(
    run_id: str,
    gw: GatewayDep,
    _: Viewer,
    format: Annotated[
        Literal["json", "text", "html"], Query(description="json, text or html")
    ] = "json",
) -> Response:
    """Every event of the run as a timeline, from the event store: who started it with
    which key, the workflow version (digest), each node attempt, each model call with its
    model, tokens and cost (null until the cost service has priced it), each approval with
    its actor and comment, each agent task with its agent, and how the run ended."""
    check_run_id(run_id)
    try:
        recorded, _version = await gw.store.read_aggregate(AggregateKey("run", run_id))
    except Exception as error:  # noqa: BLE001 — NATS trouble is a 503, not a 500
        raise Unavailable(f"the event store did not answer: {type(error).__name__}") from None
    if not recorded:
        raise NotFound(f"no run {run_id!r}")

    async def prices() -> dict[str, str | None]:
        async with gw.engine.begin() as conn:
            return await known_prices(conn, run_id)

    record = audit_record(run_id, [e.envelope for e in recorded], await gw.query(prices()))
    if format == "html":
        return HTMLResponse(to_html(record), headers={"Content-Security-Policy": HTML_POLICY})
    if format == "text":
        return PlainTextResponse(to_text(record))
    return JSONResponse(record)


@router.get(
    "/audit",
    response_model=AuditEventsPublic,
    responses={**READ, **problem_responses(400)},
    summary="Search the audit index",
)
async def search(
    request: Request,
    gw: GatewayDep,
    _: Viewer,
    actor: Annotated[
        str | None,
        Query(
            max_length=ACTOR_LABEL_MAX_CHARS,
            description="Exactly, e.g. api_key:<key id>, user:alice",
        ),
    ] = None,
    type: Annotated[
        str | None,
        Query(
            max_length=EVENT_TYPE_MAX_CHARS, description="An event type, e.g. run.approval.decided"
        ),
    ] = None,
    run: Annotated[str | None, Query(max_length=128, description="A run id")] = None,
    context: Annotated[
        str | None,
        Query(max_length=20, description="A stream: " + ", ".join(CONTEXTS)),
    ] = None,
    aggregate_id: Annotated[
        str | None,
        Query(max_length=128, description="The id of what the event is about: a run, key..."),
    ] = None,
    from_: Annotated[
        str | None, Query(alias="from", min_length=1, max_length=40, description=BOUND_DOC)
    ] = None,
    to: Annotated[str | None, Query(min_length=1, max_length=40, description=BOUND_DOC)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=100, description="From the last page's next_cursor")
    ] = None,
) -> Response:
    """Events of every audited stream (runs, API keys, budgets, agents, triggers and
    schedules, workflow versions) matching every filter given, newest first, a page at a
    time (``next_cursor``, and a ``Link: rel=next`` header, while there are more)."""
    if run is not None and not RUN_ID.fullmatch(run):
        raise _bad("run", "run must be a run id (letters, digits, _ and -)")
    if context is not None and context not in CONTEXTS:
        raise _bad("context", "context must be one of " + ", ".join(CONTEXTS))
    if aggregate_id is not None and not RUN_ID.fullmatch(aggregate_id):  # every aggregate's
        raise _bad("aggregate_id", "aggregate_id must be an id (letters, digits, _ and -)")
    start = _bound(from_, "from", end=False)
    end = _bound(to, "to", end=True)
    if start is not None and end is not None and start >= end:
        raise _bad("to", "from must be before to")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except InvalidCursor as error:
            raise _bad("cursor", str(error)) from None
    found = AuditFilter(
        actor=_text("actor", actor),
        type=_text("type", type),
        run_id=run,
        context=context,
        aggregate_id=aggregate_id,
        since=start,
        until=end,
    )

    async def page() -> tuple[list[dict[str, Any]], str | None]:
        async with gw.engine.connect() as conn:
            return await search_events(conn, found, limit=limit, cursor=cursor)

    events, next_cursor = await gw.query(page())
    headers = {}
    if next_cursor:
        url = request.url.include_query_params(cursor=next_cursor)
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return JSONResponse({"events": events, "next_cursor": next_cursor}, headers=headers)


def _bound(text: str | None, field: str, *, end: bool) -> datetime | None:
    """``from`` or ``to`` as a UTC instant. A bound past what a datetime holds once in UTC
    (``to=9999-12-31`` is the end of that day; ``0001-01-01T00:00+05:00`` is in year 0)
    is clamped to the first or last instant: a huge range is a wide search, not an error."""
    if text is None:
        return None
    try:
        return parse_bound(text, field, end=end)
    except BadRange as error:
        raise _bad(error.field, str(error)) from None
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if end else datetime.min.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w``: that long before ``now``."""
    match = SINCE.fullmatch(text.strip())
    if match is None:
        raise _bad(
            "since", f"since must be a duration such as 30m, 12h, 7d or 2w, not {text[:40]!r}"
        )
    span = int(match[1]) * SINCE_UNITS[match[2]]
    if span > SINCE_MAX:
        raise _bad("since", f"since may reach back {SINCE_MAX.days} days at most")
    return now - span


@router.get(
    "/audit/failures",
    response_model=FailuresPublic,
    responses={**READ, **problem_responses(400)},
    summary="Failures for post-mortems",
)
async def failures_report(
    gw: GatewayDep,
    _: Viewer,
    since: Annotated[
        str, Query(max_length=20, description="How far back: 30m, 12h, 7d, 2w")
    ] = "7d",
    workflow: Annotated[str | None, Query(max_length=63)] = None,
    agent: Annotated[
        str | None, Query(max_length=AGENT_ID_MAX_CHARS, description="An agent id")
    ] = None,
) -> Response:
    """Failed runs and nodes (those with no retry left) since then, grouped by error type,
    workflow and agent, the group with the latest failure first."""
    start = parse_since(since, datetime.now(UTC))
    if workflow is not None and not WORKFLOW_NAME.fullmatch(workflow):
        raise _bad("workflow", "workflow must be a workflow name")
    agent = _text("agent", agent)

    async def groups() -> list[dict[str, Any]]:
        async with gw.engine.connect() as conn:
            return await failures(conn, start, workflow=workflow, agent=agent)

    found = await gw.query(groups())
    return JSONResponse({"since": start.isoformat(), "groups": found})
