"""The http tool's task and answer: arguments checked into a request, a response into JSON.

`{method, url, headers, body, follow_redirects, fail_on_status}` in;
`{status, headers, body, body_encoding, json?, url, redirects}` out.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from chiffon.agent.tools.base import INVALID_ARGUMENTS, ToolRefused

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ARGUMENTS = frozenset({"method", "url", "headers", "body", "follow_redirects", "fail_on_status"})
#: Headers the tool writes itself: the Host names the URL's host (the one the allow-list
#: and the address fence checked), the framing follows the body that is sent.
OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade"})
#: Headers that carry a credential: never sent on to another origin by a redirect.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MAX_URL = 8192


@dataclass
class HttpRequest:
    method: str
    url: httpx.URL
    headers: list[tuple[str, str]]
    body: bytes | None
    follow_redirects: bool = True
    fail_on_status: bool = True


def _refuse(message: str) -> ToolRefused:
    return ToolRefused(INVALID_ARGUMENTS, message)


def parse_url(text: Any) -> httpx.URL:
    """An absolute http(s) URL with a host and no credentials in it."""
    if not isinstance(text, str) or not text or len(text) > _MAX_URL:
        raise _refuse(f"url must be a text of 1 to {_MAX_URL} characters")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as error:
        raise _refuse(f"url {text!r} is not a URL: {error}") from None
    if url.scheme not in ("http", "https"):
        raise _refuse(f"url {text!r}: only http and https URLs are fetched")
    if not url.host:
        raise _refuse(f"url {text!r} names no host")
    if url.userinfo:
        raise _refuse("url: credentials go in an Authorization header, not in the URL")
    return url


def _json_ready(value: Any) -> Any:
    """Whole numbers as integers: the task's JSON crossed protobuf, where every number
    is a double, and an API that wants `3` may refuse `3.0`."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    return value


def parse_request(arguments: Mapping[str, Any]) -> HttpRequest:
    unknown = sorted(set(arguments) - ARGUMENTS)
    if unknown:
        raise _refuse(f"unknown argument(s) {unknown}; the http tool takes {sorted(ARGUMENTS)}")
    method = arguments.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise _refuse(f"method must be one of {sorted(METHODS)}")
    url = parse_url(arguments.get("url"))
    headers: list[tuple[str, str]] = []
    raw_headers = arguments.get("headers") or {}
    if not isinstance(raw_headers, Mapping):
        raise _refuse("headers must be an object of name: value")
    for name, value in raw_headers.items():
        text = str(_json_ready(value)) if isinstance(value, (int, float, bool)) else value
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise _refuse(f"header name {name!r} is not an HTTP token")
        if not isinstance(text, str) or any(char in text for char in "\r\n\0"):
            raise _refuse(f"header {name}: a value is one line of text")
        if name.lower() in OWN_HEADERS:
            raise _refuse(f"header {name} is set by the tool (from the URL and the body)")
        headers.append((name, text))
    body = arguments.get("body")
    content: bytes | None = None
    if isinstance(body, str):
        content = body.encode()
    elif isinstance(body, (Mapping, list)):
        content = json.dumps(_json_ready(body), separators=(",", ":")).encode()
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", "application/json"))
    elif body is not None:
        raise _refuse("body must be a text or a JSON object or list")
    flags = {}
    for flag in ("follow_redirects", "fail_on_status"):
        value = arguments.get(flag, True)
        if not isinstance(value, bool):
            raise _refuse(f"{flag} must be true or false")
        flags[flag] = value
    return HttpRequest(method.upper(), url, headers, content, **flags)


def _media_type(headers: Mapping[str, str]) -> tuple[str, str]:
    """(media type, charset) from a Content-Type header."""
    media, *params = headers.get("content-type", "").split(";")
    charset = ""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"')
    return media.strip().lower(), charset


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity cannot cross protobuf's JSON


def response_output(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    url: httpx.URL,
    redirects: list[str],
) -> dict[str, Any]:
    """The node's outputs: text when the body decodes as its charset says, else base64."""
    joined: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    media, charset = _media_type(joined)
    output: dict[str, Any] = {"status": status, "headers": joined}
    try:
        output["body"] = body.decode(charset or "utf-8")
        output["body_encoding"] = "text"
    except (UnicodeDecodeError, LookupError):
        output["body"] = base64.b64encode(body).decode("ascii")
        output["body_encoding"] = "base64"
    if output["body_encoding"] == "text" and (
        media == "application/json" or media.endswith("+json")
    ):
        try:
            output["json"] = json.loads(output["body"], parse_constant=_reject_constant)
        except ValueError:
            pass  # a body that says JSON and is not: the text is there to read
    output["url"] = str(url)
    output["redirects"] = redirects
    return output
