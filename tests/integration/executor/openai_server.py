"""A small OpenAI-compatible HTTP server for tests: real HTTP, answers like chiffon/echo.

It records every request (so a test can count calls per node) and the most it answered
at once, and can sleep before answering, to hold a call in flight or to model provider
latency. ``fail_next`` makes it answer as a provider that refuses: a 401 for a bad key,
a 429 with ``Retry-After``, a 400 for a context window too small.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from chiffon.devstack.ports import free_port
from chiffon.executor.models.offline import count_tokens, echo_output


@dataclass
class Request:
    model: str
    prompt: str
    at: float
    body: dict[str, Any] = field(repr=False, default_factory=dict)


class ScriptedFailure(Exception):
    """Raised by a script: the server answers 503 (a provider error) with this message."""


class FakeOpenAI:
    def __init__(self, *, delay: float = 0.0, fail_first: int = 0) -> None:
        self.delay = delay
        self.fail_first = fail_first
        # (model, messages, schema) -> the answer's text, None for the echo answer, or an
        # awaitable of either; raising ScriptedFailure answers 503 with its message.
        self.script: Any = None
        self.requests: list[Request] = []
        self.in_flight = 0
        self.most_in_flight = 0  # the most calls it was answering at once
        self._refusals: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        # Merged into every answer's usage when set: fixed counts, and the details a
        # price depends on, e.g. {"prompt_tokens": 1000, "prompt_tokens_details":
        # {"cached_tokens": 600}, "completion_tokens_details": {"reasoning_tokens": 40},
        # "cache_creation_input_tokens": 100}. None: counted from the text, no details.
        self.usage: dict[str, Any] | None = None
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(
        self,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        message: str = "refused",
        error_type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        """Answer the next call not yet refused with this HTTP status (OpenAI's error body)
        and headers; each call queues one refusal, used in order."""
        error = {"message": message, "type": error_type, "param": None, "code": code}
        self._refusals.append((status, headers or {}, {"error": error}))

    def count(self, prefix: str) -> int:
        """Requests whose prompt starts with ``prefix``."""
        return sum(1 for r in self.requests if r.prompt.startswith(prefix))

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        # A call still held (a long delay) is cut at stop, not waited for.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.json()
        messages = body.get("messages") or []
        prompt = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        self.requests.append(Request(body.get("model", ""), str(prompt), time.monotonic(), body))
        if self._refusals:
            status, headers, error = self._refusals.pop(0)
            return web.json_response(error, status=status, headers=headers)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.json_response(
                {"error": {"message": "overloaded", "type": "server_error"}}, status=503
            )
        if self.delay:
            await asyncio.sleep(self.delay)
        response_format = body.get("response_format") or {}
        schema = (
            (response_format.get("json_schema") or {}).get("schema")
            if response_format.get("type") == "json_schema"
            else None
        )
        content = None
        if self.script is not None:
            try:
                content = self.script(f"openai/{body.get('model', '')}", messages, schema)
                if inspect.isawaitable(content):
                    content = await content
            except ScriptedFailure as failure:
                return web.json_response(
                    {"error": {"message": str(failure), "type": "server_error"}}, status=503
                )
        if content is None:
            content = echo_output(schema, str(prompt))
        prompt_tokens, completion_tokens = count_tokens(json.dumps(messages)), count_tokens(content)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": self._usage(prompt_tokens, completion_tokens),
            }
        )

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        }
        usage.update(self.usage or {})
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return usage
