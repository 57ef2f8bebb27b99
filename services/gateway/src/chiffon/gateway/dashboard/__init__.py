"""The dashboard: server-rendered pages (Jinja2) on the gateway, a little vanilla JS.

Login pastes an API key, kept in an HttpOnly, SameSite=Strict cookie. Every form that
changes something carries a CSRF token derived from that key (HMAC), and its Origin is
checked; the pages show only what the key's role may do, and the server checks again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import AfterValidator
from sqlalchemy import select
from starlette.staticfiles import StaticFiles

from chiffon.commands import ApproveNode, CancelRun, StartRun
from chiffon.commands.model import ListBudgets
from chiffon.commands.triggers import ListSchedules, ListTriggers
from chiffon.core.telemetry import current_traceparent
from chiffon.events import CATALOG
from chiffon.events.keys import API_KEY_ROLES, ApiKeyRole
from chiffon.events.limits import (
    COMMENT_MAX_CHARS,
    KEY_NAME_MAX_CHARS,
    REASON_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
)
from chiffon.events.runs import RUN_STATUSES, TERMINAL_STATUSES, TriggerRef
from chiffon.gateway.agents import list_agents, public_with_live
from chiffon.gateway.auth import Principal
from chiffon.gateway.costs import (
    CHART_HEIGHT,
    CHART_WIDTH,
    cost_groups,
    daily_bars,
    last_days,
    report,
    usd,
)
from chiffon.gateway.dashboard.waterfall import (
    BAR_HEIGHT,
    LABEL_WIDTH,
    ROW_HEIGHT,
    TRACK_WIDTH,
    WIDTH,
    Waterfall,
    waterfall,
)
from chiffon.gateway.keys import (
    BOOTSTRAP_KEY_ID,
    BOOTSTRAP_KEY_NAME,
    KeyAlreadyRevoked,
    KeyNotFound,
    allows,
)
from chiffon.gateway.problems import (
    Forbidden,
    NotFound,
    Problem,
    RateLimited,
    Unavailable,
    ValidationFailed,
)
from chiffon.gateway.profile_reads import run_events
from chiffon.gateway.profiles import profile_run
from chiffon.gateway.readmodel import api_keys
from chiffon.gateway.runtime import (
    RUN_ID,
    Gateway,
    GatewayDep,
    check_node_id,
    check_run_id,
    check_workflow_name,
)
from chiffon.gateway.schemas import has_nul, no_control_characters
from chiffon.gateway.throttle import AuthThrottle, client_address
from chiffon.gateway.triggers import trigger_parts
from chiffon.readmodels.queries import (
    get_run,
    get_workflow,
    list_pending_approvals,
    list_runs,
    list_workflows,
)
from chiffon.readmodels.views import RunPublic, RunSummary

HERE = Path(__file__).parent
KEY_LABEL = "api_key:"  # how the read models name an API key actor
templates = Jinja2Templates(directory=str(HERE / "templates"))
static_files = StaticFiles(directory=str(HERE / "static"))
router = APIRouter(include_in_schema=False)

RUN_EVENT_TYPES = [t for t in CATALOG.types() if t.startswith("run.")]
WATERFALL_SIZES = {
    "width": WIDTH,
    "label": LABEL_WIDTH,
    "track": TRACK_WIDTH,
    "row": ROW_HEIGHT,
    "bar": BAR_HEIGHT,
}


class LoginRequired(Exception):
    def __init__(self, next_path: str, reason: str | None = None) -> None:
        self.next_path = next_path
        self.reason = reason


def csrf_token(principal: Principal) -> str:
    return hmac.new(
        principal.token.encode(), b"chiffon-dashboard-csrf-v1", hashlib.sha256
    ).hexdigest()[:40]


async def session(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    throttled: RateLimited | None = getattr(request.state, "throttled", None)
    if throttled is not None:
        raise throttled  # too many failed authentications from here: the key was not checked
    if principal is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        had_cookie = bool(request.cookies.get(request.app.state.cookie_name))
        raise LoginRequired(
            target, "Your session ended (the key was revoked or expired)." if had_cookie else None
        )
    return principal


Session = Annotated[Principal, Depends(session)]


def _check_form(request: Request, principal: Principal, token: str, role: str, *texts: Any) -> None:
    if any(has_nul(t) for t in texts):
        raise ValidationFailed("NUL characters are not allowed", errors=[])
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise Forbidden("cross-origin form submissions are refused")
    if not hmac.compare_digest(token.encode(), csrf_token(principal).encode()):
        raise Forbidden("the form's CSRF token is missing or stale; reload the page and try again")
    if not allows(principal.key.role, role):
        raise Forbidden(f"this needs the {role} role; your key is {principal.key.role}")


def render(
    request: Request, template: str, principal: Principal | None, code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {
            "me": principal.key if principal else None,
            "csrf": csrf_token(principal) if principal else "",
            "can_operate": bool(principal and allows(principal.key.role, "operator")),
            "is_admin": bool(principal and allows(principal.key.role, "admin")),
            "statuses": RUN_STATUSES,
            "now": datetime.now(UTC),  # keys show as expired by it
            **context,
        },
        status_code=code,
        headers={"Cache-Control": "no-store"},
    )


def safe_next(path: str | None) -> str:
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


templates.env.filters["pretty"] = pretty
# The forms' maxlength and choices come from the same vocabulary the API checks.
templates.env.globals.update(
    comment_max=COMMENT_MAX_CHARS, key_name_max=KEY_NAME_MAX_CHARS, roles=API_KEY_ROLES
)
templates.env.filters["ms"] = lambda v: (
    "–" if v is None else (f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s")
)
templates.env.filters["when"] = lambda v: "–" if v is None else v.strftime("%Y-%m-%d %H:%M:%S")
templates.env.filters["urlq"] = lambda v: quote(str(v), safe="")
templates.env.filters["trigger_parts"] = trigger_parts


# -- login ----------------------------------------------------------------------------


@router.get("/login")
async def login_page(
    request: Request, next: str | None = None, reason: str | None = None
) -> Response:
    return render(request, "login.html", None, next=safe_next(next), error=None, reason=reason)


@router.post("/login")
async def login(
    request: Request,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None or not gateway.keys.loaded.is_set():
        raise Unavailable("the gateway is starting; try again in a moment", retry_after=1)
    token = api_key.strip()
    throttle: AuthThrottle = request.app.state.auth_throttle
    address = client_address(
        request.scope, trust_forwarded_for=request.app.state.trust_forwarded_for
    )
    if token:
        # As for the API: past the burst of failures, 429 before the key is checked.
        wait, what = throttle.wait(address, token)
        if wait > 0:
            raise RateLimited(wait, throttle.detail(what, wait))
    key = gateway.keys.authenticate(token) if token else None
    if key is None:
        if token:
            throttle.failed(address, token)
        reason = gateway.keys.why_refused(token) if token else "paste an API key"
        return render(
            request, "login.html", None, code=401, next=safe_next(next), error=reason, reason=None
        )
    settings = gateway.settings
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        settings.cookie_name,
        api_key.strip(),
        max_age=settings.session_max_age_seconds,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
        path="/",
    )
    return response


@router.post("/logout")
async def logout(
    request: Request, principal: Session, csrf: Annotated[str, Form(max_length=100)] = ""
) -> Response:
    _check_form(request, principal, csrf, "viewer")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        request.app.state.cookie_name, path="/", httponly=True, samesite="strict"
    )
    return response


# -- agents ---------------------------------------------------------------------------

AGENT_STATUSES = ("online", "offline", "deregistered")


async def _agents(
    gw: Gateway, status: str | None, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    if status not in AGENT_STATUSES:
        status = None
    found, next_cursor = await gw.query(
        list_agents(gw.engine, status=status, cursor=cursor or None, limit=100)
    )
    return await public_with_live(gw.store, gw.settings.namespace, found), next_cursor


@router.get("/agents")
async def agents_page(
    request: Request,
    gw: GatewayDep,
    principal: Session,
    status: Annotated[str | None, Query(max_length=30)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    found, next_cursor = await _agents(gw, status, cursor)
    return render(
        request,
        "agents.html",
        principal,
        agents=found,
        next_cursor=next_cursor,
        status=status if status in AGENT_STATUSES else "",
        cursor=cursor or "",
        agent_statuses=AGENT_STATUSES,
    )


@router.get("/agents/table")
async def agents_table(
    request: Request,
    gw: GatewayDep,
    principal: Session,
    status: Annotated[str | None, Query(max_length=30)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    found, _ = await _agents(gw, status, cursor)
    return render(request, "_agents_rows.html", principal, agents=found)


# -- runs -----------------------------------------------------------------------------


async def _runs_page(
    gw: Gateway, status: str | None, workflow: str | None, cursor: str | None
) -> tuple[list[RunSummary], str | None]:
    if status not in RUN_STATUSES:
        status = None
    return await gw.query(
        list_runs(
            gw.engine, status=status, workflow=workflow or None, cursor=cursor or None, limit=50
        )
    )


@router.get("/")
async def runs_page(
    request: Request,
    gw: GatewayDep,
    principal: Session,
    status: Annotated[str | None, Query(max_length=30)] = None,
    workflow: Annotated[str | None, Query(max_length=WORKFLOW_NAME_MAX_CHARS)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    found, next_cursor = await _runs_page(gw, status, workflow, cursor)
    workflows = await gw.query(list_workflows(gw.engine))
    return render(
        request,
        "runs.html",
        principal,
        runs=found,
        next_cursor=next_cursor,
        status=status or "",
        workflow=workflow or "",
        cursor=cursor or "",
        workflows=workflows,
    )


@router.get("/runs/table")
async def runs_table(
    request: Request,
    gw: GatewayDep,
    principal: Session,
    status: Annotated[str | None, Query(max_length=30)] = None,
    workflow: Annotated[str | None, Query(max_length=WORKFLOW_NAME_MAX_CHARS)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    found, _ = await _runs_page(gw, status, workflow, cursor)
    return render(request, "_runs_rows.html", principal, runs=found)


async def _run(gw: Gateway, run_id: str, min_position: int = 0) -> RunPublic:
    check_run_id(run_id)
    run: RunPublic | None = await gw.read_through("run", run_id, lambda: get_run(gw.engine, run_id))
    if run is None:
        raise NotFound(f"no run {run_id!r}")
    # The page asks for the view that includes the event it just saw (bounded wait).
    deadline = asyncio.get_running_loop().time() + 2.0
    while run.position < min_position and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.03)
        again = await gw.query(get_run(gw.engine, run_id))
        if again is not None:
            run = again
    return run


async def _names(gw: Gateway, run: RunPublic) -> dict[str, str]:
    """Who requested and decided, by API key name: the read model keeps the stable
    ``api_key:<id>`` label, which says little to a person reading the page."""
    labels = {run.requested_by, *(a.decided_by for a in run.approvals if a.decided_by)}
    ids = {label.removeprefix(KEY_LABEL) for label in labels if label.startswith(KEY_LABEL)}
    names = {BOOTSTRAP_KEY_ID: BOOTSTRAP_KEY_NAME} if BOOTSTRAP_KEY_ID in ids else {}
    ids.discard(BOOTSTRAP_KEY_ID)
    if ids:
        async with gw.engine.connect() as conn:
            found = await conn.execute(
                select(api_keys.c.key_id, api_keys.c.name).where(api_keys.c.key_id.in_(ids))
            )
            names.update((key_id, name) for key_id, name in found)
    return {
        f"{KEY_LABEL}{key_id}": f"{name} ({KEY_LABEL}{key_id})" for key_id, name in names.items()
    }


async def _waterfall(gw: Gateway, run_id: str) -> Waterfall | None:
    """The run's waterfall from its events; None when the event store does not answer
    (the rest of the page, from the read model, is still worth showing)."""
    try:
        events = await gw.query(run_events(gw, run_id))
    except (Unavailable, NotFound):
        return None
    return waterfall(profile_run(run_id, events))


async def _run_view(gw: Gateway, run_id: str, min_position: int = 0) -> dict[str, Any]:
    """What the run page and its refreshed panel show."""
    run = await _run(gw, run_id, min_position)
    return {
        "run": run,
        "who": await _names(gw, run),
        "ended": run.status in TERMINAL_STATUSES,
        "waterfall": await _waterfall(gw, run_id),
        "wf": WATERFALL_SIZES,
    }


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: str, gw: GatewayDep, principal: Session) -> Response:
    view = await _run_view(gw, run_id)
    return render(request, "run.html", principal, **view, event_types=RUN_EVENT_TYPES)


@router.get("/runs/{run_id}/panel")
async def run_panel(
    request: Request,
    run_id: str,
    gw: GatewayDep,
    principal: Session,
    min_position: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> Response:
    view = await _run_view(gw, run_id, min_position)
    return render(request, "_run_panel.html", principal, **view)


@router.post("/runs/{run_id}/cancel")
async def cancel_run(
    request: Request,
    run_id: str,
    gw: GatewayDep,
    principal: Session,
    csrf: Annotated[str, Form(max_length=100)] = "",
    reason: Annotated[str, Form(max_length=REASON_MAX_CHARS)] = "",
) -> Response:
    _check_form(request, principal, csrf, "operator", reason)
    check_run_id(run_id)
    await gw.send(
        CancelRun(
            actor=principal.actor,
            trace=current_traceparent(),
            run_id=run_id,
            reason=reason or "cancelled from the dashboard",
        )
    )
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/approvals/{node_id}")
async def decide(
    request: Request,
    run_id: str,
    node_id: str,
    gw: GatewayDep,
    principal: Session,
    decision: Annotated[str, Form(pattern="^(approve|reject)$")],
    csrf: Annotated[str, Form(max_length=100)] = "",
    comment: Annotated[str, Form(max_length=COMMENT_MAX_CHARS)] = "",
) -> Response:
    _check_form(request, principal, csrf, "operator", comment)
    check_run_id(run_id)
    check_node_id(node_id)
    await gw.send(
        ApproveNode(
            actor=principal.actor,
            trace=current_traceparent(),
            run_id=run_id,
            node_id=node_id,
            approve=decision == "approve",
            comment=comment or None,
        )
    )
    back = safe_next(request.headers.get("x-return-to") or f"/runs/{run_id}")
    return RedirectResponse(back, status_code=303)


# -- starting a run -------------------------------------------------------------------


def _coerce(kind: object, raw: str) -> Any:
    """A form field's text as the input's value: JSON unless the input is a string."""
    if kind == "string":
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # the workflow's input types say whether text fits


@router.post("/start")
async def start_run(request: Request, gw: GatewayDep, principal: Session) -> Response:
    form = await request.form()
    _check_form(
        request, principal, str(form.get("csrf", "")), "operator", *[str(v) for v in form.values()]
    )
    name = check_workflow_name(str(form.get("workflow", "")))
    version_text = str(form.get("version", "") or "")
    version = int(version_text) if version_text.isdigit() else None
    workflow = await gw.query(get_workflow(gw.engine, name, version))
    if workflow is None:
        raise NotFound(f"no workflow named {name!r}")
    inputs: dict[str, Any] = {}
    for input_name, spec in (workflow.inputs or {}).items():
        raw = form.get(f"in.{input_name}")
        if raw is None or str(raw) == "":
            continue
        kind = spec.get("type") if isinstance(spec, dict) else None
        inputs[input_name] = _coerce(kind, str(raw))
    try:
        result = await gw.send(
            StartRun(
                actor=principal.actor,
                trace=current_traceparent(),
                workflow=name,
                version=workflow.version,
                inputs=inputs,
                trigger=TriggerRef(kind="api", id=principal.key.key_id),
            )
        )
    except Problem as problem:
        return render(
            request,
            "workflow.html",
            principal,
            code=problem.status,
            workflow=workflow,
            error=problem.detail,
            errors=problem.errors or [],
            values={k: str(form.get(f"in.{k}", "")) for k in workflow.inputs},
        )
    return RedirectResponse(f"/runs/{result['run_id']}", status_code=303)


# -- workflows, approvals, keys -------------------------------------------------------


@router.get("/workflows")
async def workflows_page(request: Request, gw: GatewayDep, principal: Session) -> Response:
    return render(
        request, "workflows.html", principal, workflows=await gw.query(list_workflows(gw.engine))
    )


@router.get("/workflows/{name}")
async def workflow_page(
    request: Request,
    name: str,
    gw: GatewayDep,
    principal: Session,
    version: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
) -> Response:
    check_workflow_name(name)
    workflow = await gw.query(get_workflow(gw.engine, name, version))
    if workflow is None:
        raise NotFound(
            f"no workflow named {name!r}" + (f" with version {version}" if version else "")
        )
    return render(
        request, "workflow.html", principal, workflow=workflow, error=None, errors=[], values={}
    )


@router.get("/costs")
async def costs_page(request: Request, gw: GatewayDep, principal: Session) -> Response:
    """Spend per day for the last 30 days (an SVG bar chart drawn here, no script), the
    top workflows and models, and the budgets. A part whose source is down (the cost
    service's tables or commands) says so; the rest of the page still shows."""
    today = datetime.now(UTC).date()
    start, end = last_days(today)
    spend: dict[str, Any] = {}
    notices: list[str] = []
    try:
        days, workflows, models = await asyncio.gather(
            gw.query(cost_groups(gw.engine, "day", start=start, end=end)),
            gw.query(cost_groups(gw.engine, "workflow", start=start, end=end, limit=5)),
            gw.query(cost_groups(gw.engine, "model", start=start, end=end, limit=5)),
        )
        bars, top = daily_bars(days, today)
        spend = {
            "bars": bars,
            "top_usd": usd(top),
            "total": report("day", days)["total_usd"],
            "calls": sum(d.calls for d in days),
            "unknown_calls": sum(d.unknown_calls for d in days),
            "workflows": [g.public() for g in workflows],
            "models": [g.public() for g in models],
        }
    except Unavailable as problem:
        notices.append(f"Spend is not available: {problem.detail}")
    budgets: list[dict[str, Any]] | None = None
    try:
        answer = await gw.send(ListBudgets(actor=principal.actor, trace=current_traceparent()))
        budgets = list(answer.get("budgets") or [])
    except Unavailable as problem:
        notices.append(f"Budgets are not available: {problem.detail}")
    return render(
        request,
        "costs.html",
        principal,
        spend=spend,
        budgets=budgets,
        notices=notices,
        since=start.date(),
        chart_width=CHART_WIDTH,
        chart_height=CHART_HEIGHT,
    )


@router.get("/triggers")
async def triggers_page(request: Request, gw: GatewayDep, principal: Session) -> Response:
    """Webhook triggers (scheme, workflow, enabled, deliveries, the last one, the hook's
    URL) and cron schedules (cron, zone, next fire, paused, last run). A part the trigger
    service cannot answer now says so; the rest still shows."""
    notices: list[str] = []
    triggers: list[dict[str, Any]] | None = None
    schedules: list[dict[str, Any]] | None = None
    trace = current_traceparent()
    found = await asyncio.gather(
        gw.send(ListTriggers(actor=principal.actor, trace=trace)),
        gw.send(ListSchedules(actor=principal.actor, trace=trace)),
        return_exceptions=True,
    )
    for what, answer in zip(("Triggers", "Schedules"), found, strict=True):
        if isinstance(answer, Unavailable):
            notices.append(f"{what} are not available: {answer.detail}")
        elif isinstance(answer, BaseException):
            raise answer
        elif what == "Triggers":
            triggers = [
                {**t, "hook_url": gw.settings.hook_url(str(t.get("hook_path") or ""))}
                for t in answer.get("triggers") or []
            ]
        else:
            schedules = list(answer.get("schedules") or [])
    return render(
        request,
        "triggers.html",
        principal,
        triggers=triggers,
        schedules=schedules,
        notices=notices,
    )


@router.get("/approvals")
async def approvals_page(request: Request, gw: GatewayDep, principal: Session) -> Response:
    return render(
        request,
        "approvals.html",
        principal,
        approvals=await gw.query(list_pending_approvals(gw.engine)),
    )


@router.get("/keys")
async def keys_page(request: Request, gw: GatewayDep, principal: Session) -> Response:
    if not allows(principal.key.role, "admin"):
        raise Forbidden("the keys page needs the admin role")
    return render(
        request,
        "keys.html",
        principal,
        keys=gw.keys.all(),
        created=None,
        token=None,
        bootstrap=BOOTSTRAP_KEY_ID,
    )


@router.post("/keys")
async def create_key(
    request: Request,
    gw: GatewayDep,
    principal: Session,
    name: Annotated[
        str,
        Form(min_length=1, max_length=KEY_NAME_MAX_CHARS),
        AfterValidator(no_control_characters),
    ],
    role: Annotated[ApiKeyRole, Form()],
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    _check_form(request, principal, csrf, "admin", name)
    key, token = await gw.api_keys.create(
        name=name, role=role, actor=principal.actor, trace=current_traceparent()
    )
    gw.keys.put(key)
    return render(
        request,
        "keys.html",
        principal,
        code=201,
        keys=gw.keys.all(),
        created=key,
        token=token,
        bootstrap=BOOTSTRAP_KEY_ID,
    )


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    request: Request,
    key_id: str,
    gw: GatewayDep,
    principal: Session,
    csrf: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    _check_form(request, principal, csrf, "admin")
    if not RUN_ID.fullmatch(key_id) or key_id == BOOTSTRAP_KEY_ID:
        raise NotFound(f"no revocable API key {key_id[:100]!r}")
    try:
        key = await gw.api_keys.revoke(
            key_id,
            actor=principal.actor,
            reason="revoked from the dashboard",
            trace=current_traceparent(),
        )
    except KeyNotFound as error:
        raise NotFound(str(error)) from None
    except KeyAlreadyRevoked:
        return RedirectResponse("/keys", status_code=303)
    gw.keys.put(key)
    return RedirectResponse("/keys", status_code=303)


def error_page(request: Request, problem: Problem) -> Response:
    principal = getattr(request.state, "principal", None)
    page = render(request, "error.html", principal, code=problem.status, problem=problem)
    page.headers.update(problem.headers)  # Retry-After, Allow, WWW-Authenticate
    return page


def login_redirect(request: Request, exc: LoginRequired) -> Response:
    target = "/login?next=" + quote(exc.next_path, safe="")
    if exc.reason:
        target += "&reason=" + quote(exc.reason, safe="")
    if request.headers.get("x-requested-with") == "fetch":
        return Response(status_code=401)
    return RedirectResponse(target, status_code=303)
