"""The one interface every model client has: a request in, a reply out, or a ``ProviderError``.

The node runners see only this: which client answers a model string (the in-process
offline model or LiteLLM) is the gateway's choice, so the two never import each other.
One input model and one result model, so the call can grow a field without breaking a
client or a caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One chat call to one model (``model`` is the model the client must call)."""

    model: str
    messages: list[dict[str, str]]
    response_format: dict[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class ModelReply:
    """What a model answered, and what the call cost in tokens and time."""

    text: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    finish_reason: str | None
    # Parts of the two counts above that are priced differently, where the provider
    # reports them (0 where it does not): cached input read and written, reasoning.
    cached_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class ProviderError(Exception):
    """The provider did not answer. ``kind`` names the failure (``ErrorInfo.type``);
    ``retryable`` is False when another try cannot succeed (a bad key, a bad request);
    ``retry_after`` is the wait in seconds the provider asked for, if it asked."""

    def __init__(
        self,
        model: str,
        message: str,
        *,
        kind: str = "provider_error",
        provider: str = "unknown",
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.provider = provider
        self.kind = kind
        self.retryable = retryable
        self.retry_after = retry_after


class ModelClient(Protocol):
    """Answers a chat request; raises ``ProviderError`` for any provider failure."""

    async def complete(self, request: ModelRequest) -> ModelReply: ...
