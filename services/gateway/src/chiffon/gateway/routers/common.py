"""Helpers shared by the routers: content types, pages, and the problems each route
documents."""

from __future__ import annotations

import email.message

from fastapi import Request, Response
from pydantic import BaseModel

from chiffon.gateway.problems import UnsupportedMediaType, problem_responses

READ = problem_responses(401, 403, 404, 422, 429, 503)
WRITE = problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)


def media_type(request: Request) -> str | None:
    raw = request.headers.get("content-type")
    if not raw:
        return None
    message = email.message.Message()
    message["content-type"] = raw
    return message.get_content_type().lower()


def is_json(media: str | None) -> bool:
    return media is not None and (
        media == "application/json"
        or (media.startswith("application/") and media.endswith("+json"))
    )


async def require_json(request: Request) -> None:
    """A JSON body, declared as such (415 otherwise)."""
    media = media_type(request)
    if not is_json(media):
        raise UnsupportedMediaType(
            f"send the body as application/json (got {media or 'no Content-Type'})"
        )


async def optional_json(request: Request) -> None:
    """A body is optional; when there is one, it is JSON."""
    if (
        request.headers.get("content-length") in (None, "0")
        and "transfer-encoding" not in request.headers
    ):
        return
    media = media_type(request)
    if media is not None and not is_json(media):
        raise UnsupportedMediaType(f"send the body as application/json (got {media})")


def page_response(request: Request, page: BaseModel, next_cursor: str | None) -> Response:
    """A page of a list, with a ``Link: rel=next`` header to the next one when there is."""
    headers = {}
    if next_cursor:
        url = request.url.include_query_params(cursor=next_cursor)
        headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return Response(page.model_dump_json(), media_type="application/json", headers=headers)
