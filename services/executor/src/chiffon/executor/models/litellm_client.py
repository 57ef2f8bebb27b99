"""Model calls through LiteLLM: one call per try, no retries here (the node policy owns them).

LiteLLM is imported once, when the executor starts (``LiteLlmClient.setup``, in a
thread, while the health endpoint answers), never on a run's path. Its price map is the
bundled local copy (``LITELLM_LOCAL_MODEL_COST_MAP``), so nothing is fetched at import.
OpenAI-style calls use LiteLLM's own HTTP handler (see below). LiteLLM's pricing and
success logging, which Chiffon does not read, are skipped while no LiteLLM callback
reads them either (``litellm_lean``). Provider keys and base URLs come from the
environment as LiteLLM reads them (``OPENAI_API_KEY``, ``OPENAI_API_BASE``, ...).

A failure is classified (``provider_errors``): the node's retry policy retries only what
another try can cure, and waits at least what the provider's ``Retry-After`` asked.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from chiffon.executor.models.base import ModelReply, ModelRequest
from chiffon.executor.models.litellm_lean import skip_unused_bookkeeping
from chiffon.executor.models.provider_errors import ProviderErrorClassifier

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# OpenAI and OpenAI-compatible calls through LiteLLM's own HTTP handler rather than the
# openai SDK, whose request transformation (hashing typing generics) costs about 2 ms of
# CPU per call: a third of all the CPU a call takes. Set it to "false" to use the SDK.
os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "true")

# Providers that run locally and need no key.
_KEYLESS = frozenset({"ollama", "ollama_chat", "lm_studio", "vllm", "hosted_vllm", "llamafile"})


class LiteLlmClient:
    """Calls any provider LiteLLM knows by its model string (``openai/gpt-4o-mini``)."""

    in_process = False

    def __init__(self) -> None:
        self._litellm: Any = None
        self._errors: ProviderErrorClassifier | None = None
        self._providers: dict[str, str] = {}

    def setup(self) -> None:
        """Import and configure LiteLLM (seconds, once per process)."""
        if self._litellm is not None:
            return
        # Imported here, not at the top: the import costs seconds of CPU, and the executor
        # does it in a thread at start so its health endpoint answers meanwhile.
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.drop_params = True  # a provider that lacks a parameter ignores it
        skip_unused_bookkeeping(litellm)
        self._errors = ProviderErrorClassifier(litellm)
        self._litellm = litellm
        self._warm_up()

    def _warm_up(self) -> None:
        """Run LiteLLM's code paths once, so their lazy imports (seconds of CPU on a small
        machine) happen here and not during a run, where they would stall the event loop
        and with it the in-progress signals that keep a run claimed."""
        litellm = self._litellm
        messages = [{"role": "user", "content": "warm up"}]
        with contextlib.suppress(Exception):
            # The OpenAI-compatible path (most providers and self-hosted servers), against a
            # closed local port: fails at once, after importing everything it needs.
            litellm.completion(
                model="openai/warm-up",
                messages=messages,
                api_base="http://127.0.0.1:9/v1",
                api_key="warm-up",
                timeout=0.5,
                num_retries=0,
                max_retries=0,
            )

    # -- which provider -------------------------------------------------------------

    def provider_of(self, model: str) -> str:
        """The LiteLLM provider of a model string (``openai`` for ``openai/gpt-4o``)."""
        found = self._providers.get(model)
        if found is None:
            self.setup()
            try:
                found = str(self._litellm.get_llm_provider(model)[1])
            except Exception:  # noqa: BLE001 — an unknown provider fails at call time, clearly
                found = model.split("/", 1)[0]
            self._providers[model] = found
        return found

    def has_credentials(self, model: str) -> bool:
        """Whether the environment holds a key or a base URL for the model's provider."""
        provider = self.provider_of(model)
        if provider in _KEYLESS:
            return True
        prefix = provider.upper().replace("-", "_")
        if any(
            os.environ.get(f"{prefix}_{suffix}") for suffix in ("API_BASE", "BASE_URL", "API_KEY")
        ):
            return True
        try:
            report = self._litellm.validate_environment(model=model)
        except Exception:  # noqa: BLE001
            return False
        return bool(report.get("keys_in_environment"))

    # -- one call ---------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelReply:
        """One call to one model; ``ProviderError`` (classified) on any provider failure."""
        self.setup()
        assert self._errors is not None
        provider = self.provider_of(request.model)
        params: dict[str, Any] = {}
        if request.response_format is not None:
            params["response_format"] = request.response_format
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.timeout is not None:
            params["timeout"] = max(0.05, request.timeout)
        started = time.perf_counter()
        try:
            response = await self._litellm.acompletion(
                model=request.model,
                messages=request.messages,
                num_retries=0,  # the node's retry policy owns retries
                **params,
            )
        except Exception as error:  # noqa: BLE001 — every provider failure, classified
            raise self._errors.classify(error, model=request.model, provider=provider) from None
        latency = (time.perf_counter() - started) * 1000
        choice = response.choices[0]
        counts = usage_counts(getattr(response, "usage", None))
        return ModelReply(
            text=str(getattr(choice.message, "content", None) or ""),
            provider=provider,
            model=request.model,
            prompt_tokens=counts.prompt,
            completion_tokens=counts.completion,
            latency_ms=latency,
            finish_reason=getattr(choice, "finish_reason", None),
            cached_read_tokens=counts.cached_read,
            cache_write_tokens=counts.cache_write,
            reasoning_tokens=counts.reasoning,
        )


@dataclass(frozen=True, slots=True)
class UsageCounts:
    prompt: int = 0
    completion: int = 0
    cached_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


def usage_counts(usage: Any) -> UsageCounts:
    """The token counts a price depends on, from a response's usage (an object or a dict).

    OpenAI shape: ``prompt_tokens_details.cached_tokens`` and
    ``completion_tokens_details.reasoning_tokens``. Anthropic's, as LiteLLM passes it on:
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` (LiteLLM counts both in
    ``prompt_tokens``, as OpenAI counts cached tokens). A count the provider does not
    report is 0; a part never exceeds its whole."""
    if usage is None:
        return UsageCounts()
    prompt = _count(usage, "prompt_tokens")
    completion = _count(usage, "completion_tokens")
    prompt_details = _field(usage, "prompt_tokens_details")
    completion_details = _field(usage, "completion_tokens_details")
    cached_read = _count(usage, "cache_read_input_tokens") or _count(
        prompt_details, "cached_tokens"
    )
    cache_write = (
        _count(usage, "cache_creation_input_tokens")
        or _count(prompt_details, "cache_creation_tokens")
        or _count(prompt_details, "cache_write_tokens")
    )
    reasoning = _count(completion_details, "reasoning_tokens")
    cached_read = min(cached_read, prompt)
    return UsageCounts(
        prompt=prompt,
        completion=completion,
        cached_read=cached_read,
        cache_write=min(cache_write, prompt - cached_read),
        reasoning=min(reasoning, completion),
    )


def _field(holder: Any, name: str) -> Any:
    if holder is None:
        return None
    if isinstance(holder, dict):
        return holder.get(name)
    return getattr(holder, name, None)


def _count(holder: Any, name: str) -> int:
    value = _field(holder, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))
