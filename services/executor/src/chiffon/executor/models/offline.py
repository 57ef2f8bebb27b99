"""``chiffon/echo``: the built-in offline model, deterministic and schema-valid.

It answers in-process (no LiteLLM, no network) and depends on the prompt alone:

- without an output schema: ``echo: <the prompt>`` (cut at 2,000 characters);
- with one (``response_format`` JSON schema): a JSON object with every field, where
  ``integer`` = 1 + (sha256(field, prompt) mod 10), so 1..10; ``number`` = the same
  hash mod 1000 / 100, so 0.00..9.99; ``boolean`` = the hash is even; ``string`` =
  ``"<field>: <first 80 characters of the prompt>"``; ``list[T]`` = three items of T;
  ``object`` = ``{"echo": <prompt excerpt>}``.

So the same prompt always gets the same answer, and a prompt that changes (a loop that
feeds back a revision number or the previous draft) gets a new score: a condition such
as ``score < 7`` is testable and its outcome predictable with :func:`echo_output`.
Usage counts one token per 4 characters (at least 1).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from chiffon.executor.models.base import ModelReply, ModelRequest

PROVIDER = "chiffon"
MODEL = "chiffon/echo"
MAX_ECHO = 2000


def _digest(field_name: str, prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{field_name}\x00{prompt}".encode()).digest()[:8], "big")


def _excerpt(prompt: str, size: int = 80) -> str:
    text = " ".join(prompt.split())
    return text if len(text) <= size else text[: size - 1] + "…"


def echo_value(field_name: str, schema: dict[str, Any], prompt: str) -> Any:
    """The value ``chiffon/echo`` gives for one field of a JSON schema."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    h = _digest(field_name, prompt)
    if kind == "integer":
        return 1 + h % 10
    if kind == "number":
        return (h % 1000) / 100
    if kind == "boolean":
        return h % 2 == 0
    if kind == "array":
        items = schema.get("items") or {"type": "string"}
        return [echo_value(f"{field_name}[{i}]", items, prompt) for i in range(3)]
    if kind == "object":
        props = schema.get("properties")
        if isinstance(props, dict) and props:
            return {k: echo_value(f"{field_name}.{k}", v, prompt) for k, v in props.items()}
        return {"echo": _excerpt(prompt)}
    return f"{field_name}: {_excerpt(prompt)}"


def echo_output(schema: dict[str, Any] | None, prompt: str) -> str:
    """The reply text for a prompt (the last user message), given an output schema or not."""
    if not schema:
        text = f"echo: {prompt}"
        return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 1] + "…"
    props = schema.get("properties") or {}
    return json.dumps({k: echo_value(k, v, prompt) for k, v in props.items()}, ensure_ascii=False)


def count_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _schema_of(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema") or {}
        schema = inner.get("schema")
        return schema if isinstance(schema, dict) else None
    if response_format.get("type") == "json_object":
        return {"type": "object", "properties": {}}
    return None


def _prompt_of(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(the last user message, every message's text) of a chat request."""
    last_user = ""
    every: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        text = str(content or "")
        every.append(text)
        if message.get("role") == "user":
            last_user = text
    return last_user, "\n".join(every)


class OfflineClient:
    """The ``chiffon/*`` model client: answers in this process, in microseconds, and never
    fails (so nothing it answers is worth a cancel-interruptible task, see ``in_process``)."""

    in_process = True

    async def complete(self, request: ModelRequest) -> ModelReply:
        started = time.perf_counter()
        prompt, every = _prompt_of(request.messages)
        content = echo_output(_schema_of(request.response_format), prompt)
        return ModelReply(
            text=content,
            provider=PROVIDER,
            model=request.model,
            prompt_tokens=count_tokens(every),
            completion_tokens=count_tokens(content),
            latency_ms=(time.perf_counter() - started) * 1000,
            finish_reason="stop",
        )
