"""A local HTTP server standing in for Meta's WhatsApp Cloud API and Telegram's Bot API.

Started by a test (a thread; no network beyond 127.0.0.1), it accepts what the trigger
service sends to those APIs, records each request, and answers as the real APIs do:

- ``POST {whatsapp_base}/{phone_number_id}/messages`` with ``Authorization: Bearer
  <token>``: ``{"messaging_product": "whatsapp", "contacts": [...], "messages": [{"id"}]}``;
  a wrong token: 401 with Meta's error shape.
- ``POST {telegram_base}/bot<token>/sendMessage``: ``{"ok": true, "result": {...}}``;
  a wrong token: 401 ``{"ok": false, "error_code": 401, "description": "Unauthorized"}``.

``fail_next(status, times=...)`` makes the next requests fail (a 500, a 429 with
``Retry-After``, a 400...) before it answers normally again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WHATSAPP_PREFIX = "/whatsapp/v21.0"
TELEGRAM_PREFIX = "/telegram"


@dataclass(frozen=True)
class Received:
    """One request as the stand-in got it."""

    api: str  # "whatsapp" or "telegram"
    path: str
    token: str | None  # the bearer token (WhatsApp) or the token in the path (Telegram)
    body: Any
    status: int  # what the stand-in answered

    @property
    def text(self) -> str:
        if self.api == "whatsapp":
            return str(self.body["text"]["body"])
        return str(self.body["text"])

    @property
    def chat(self) -> str:
        """Where it went: ``<phone_number_id>:<to>`` (WhatsApp) or the chat id (Telegram)."""
        if self.api == "whatsapp":
            return f"{self.path.split('/')[-2]}:{self.body['to']}"
        return str(self.body["chat_id"])


@dataclass
class _Failure:
    status: int
    body: Any
    headers: dict[str, str]
    times: int
    after: int  # requests still answered normally before this failure starts


@dataclass
class StandinApi:
    """The stand-in; ``tokens`` are the valid tokens (None: any token is accepted)."""

    tokens: set[str] | None = None
    received: list[Received] = field(default_factory=list)
    _failures: list[_Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _message_ids: int = 0

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def whatsapp_base(self) -> str:
        """For ``CHIFFON_WHATSAPP_API_BASE``."""
        return self.url + WHATSAPP_PREFIX

    @property
    def telegram_base(self) -> str:
        """For ``CHIFFON_TELEGRAM_API_BASE``."""
        return self.url + TELEGRAM_PREFIX

    def fail_next(
        self,
        status: int = 500,
        *,
        times: int = 1,
        after: int = 0,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` requests (any API) after ``after`` more that succeed are
        answered with ``status``."""
        if body is None:
            body = {"ok": False, "error_code": status, "description": f"stand-in failure {status}"}
        with self._lock:
            self._failures.append(_Failure(status, body, dict(headers or {}), times, after))

    def delivered(self, api: str | None = None, chat: str | None = None) -> list[Received]:
        """The requests answered 2xx (the messages the chat got), in order."""
        with self._lock:
            return [
                r
                for r in self.received
                if 200 <= r.status < 300
                and (api is None or r.api == api)
                and (chat is None or r.chat == chat)
            ]

    def requests(self, api: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.received if api is None or r.api == api]

    def start(self) -> StandinApi:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 — http.server's name
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                status, answer, headers = standin._answer(
                    self.path, self.headers.get("authorization"), body
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05),
            name="standin-api",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _answer(
        self, path: str, authorization: str | None, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if path.startswith(WHATSAPP_PREFIX + "/") and path.endswith("/messages"):
            api = "whatsapp"
            token = (
                authorization.removeprefix("Bearer ")
                if authorization and authorization.startswith("Bearer ")
                else None
            )
        elif path.startswith(TELEGRAM_PREFIX + "/bot") and path.endswith("/sendMessage"):
            api = "telegram"
            token = path.removeprefix(TELEGRAM_PREFIX + "/bot").removesuffix("/sendMessage")
        else:
            return 404, {"error": {"message": f"no route {path}"}}, {}
        with self._lock:
            status, answer, headers = self._decide(api, token, body)
            self.received.append(Received(api, path, token, body, status))
        return status, answer, headers

    def _decide(self, api: str, token: str | None, body: Any) -> tuple[int, Any, dict[str, str]]:
        if self._failures and self._failures[0].after > 0:
            self._failures[0].after -= 1
        elif self._failures:
            failure = self._failures[0]
            failure.times -= 1
            if failure.times <= 0:
                self._failures.pop(0)
            return failure.status, failure.body, failure.headers
        if self.tokens is not None and token not in self.tokens:
            if api == "telegram":
                return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}, {}
            return 401, {"error": {"message": "Invalid OAuth access token.", "code": 190}}, {}
        self._message_ids += 1
        if api == "whatsapp":
            return (
                200,
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                    "messages": [{"id": f"wamid.standin{self._message_ids}"}],
                },
                {},
            )
        return (
            200,
            {
                "ok": True,
                "result": {
                    "message_id": self._message_ids,
                    "chat": {"id": body.get("chat_id")},
                    "text": body.get("text"),
                },
            },
            {},
        )


@contextmanager
def standin_api(tokens: set[str] | None = None) -> Iterator[StandinApi]:
    """A started stand-in, stopped at the end."""
    api = StandinApi(tokens=tokens).start()
    try:
        yield api
    finally:
        api.stop()
