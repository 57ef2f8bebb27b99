"""``GET /v1/runs/{run_id}/events``: a run's events as server-sent events."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from chiffon.gateway.auth import KeyCache, Viewer
from chiffon.gateway.problems import BadRequest, NotFound, problem_responses
from chiffon.gateway.routers.common import READ
from chiffon.gateway.runtime import GatewayDep, check_run_id
from chiffon.gateway.sse import history_stream, sse_stream

router = APIRouter(prefix="/v1", tags=["events"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# A stream sequence as this gateway sends it in ``id:``: decimal digits, at most the
# largest sequence ``?after=`` accepts. ``int()`` alone also took ``-1``, ``+5``, ``1_0``
# and 32-digit numbers; the last one reached the event store and broke the stream mid-body.
SEQUENCE = re.compile(r"[0-9]{1,19}")
SEQUENCE_MAX = 2**63 - 1


def key_usable(keys: KeyCache, key_id: str) -> bool:
    """The follower's key, as the KeyCache has it now, still authenticates."""
    key = keys.get(key_id)
    return key is not None and key.usable(datetime.now(UTC))


def parse_last_event_id(raw: str) -> int:
    """The stream sequence in a ``Last-Event-ID`` header, or 400 before anything streams."""
    text = raw.strip()
    if SEQUENCE.fullmatch(text) is None or int(text) > SEQUENCE_MAX:
        raise BadRequest(
            f"Last-Event-ID must be a stream sequence: an integer from 0 to {SEQUENCE_MAX} "
            f"(got {text[:40]!r})",
            errors=[{"path": "header.Last-Event-ID", "line": None, "message": "not a sequence"}],
        )
    return int(text)


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: `id:` stream sequence, `event:` event type, "
            "`data:` the event's envelope as JSON",
            "content": {
                "text/event-stream": {
                    # Each message of the stream (the events, not the comments):
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "id": {"type": "string", "description": "The event's stream sequence"},
                            "event": {"type": "string", "description": "The event type"},
                            "data": {"type": "string", "description": "The envelope, as JSON"},
                            "retry": {"type": "integer"},
                        },
                    }
                }
            },
        },
        **READ,
        # A Last-Event-ID that is no stream sequence.
        **problem_responses(400),
    },
    summary="Follow a run's events (SSE)",
)
async def run_events(
    run_id: str,
    gw: GatewayDep,
    principal: Viewer,
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="Resume after this stream sequence")
    ] = None,
    follow: Annotated[bool, Query(description="false: send the history and end")] = True,
    output: Annotated[
        bool,
        Query(
            description="true: while following, also send agent tasks' output lines live as "
            "`event: output` messages without `id:` (not resumable; the result holds them all)"
        ),
    ] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The run's history, then its live events; the stream ends after the run's last
    event (run.completed, run.failed or run.cancelled). ``Last-Event-ID`` (or ``after``)
    resumes after that event, on any gateway replica, with nothing lost or repeated.
    A comment line keeps an idle connection alive. With ``output=true`` the lines agent
    tasks print arrive too, live, as ``event: output`` (no ``id:``)."""
    check_run_id(run_id)
    position = after or 0
    if last_event_id is not None and last_event_id.strip():
        position = parse_last_event_id(last_event_id)
    # A run followed here already needs no check; otherwise ask the event store (the
    # read model may not show a run started a moment ago).
    if not gw.feeds.has(run_id) and not await gw.in_store("run", run_id):
        raise NotFound(f"no run {run_id!r}")
    start = 1  # the consumer's subject filter finds the run's first event by index
    settings = gw.settings
    if not follow:
        body = history_stream(
            gw.store, run_id, after=position, start=start, retry_ms=settings.sse_retry_ms
        )
    else:
        body = sse_stream(
            gw.feeds,
            run_id,
            after=position,
            start=start,
            keepalive=settings.sse_keepalive_seconds,
            retry_ms=settings.sse_retry_ms,
            key_usable=partial(key_usable, gw.keys, principal.key.key_id),
            output=output,
        )
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
