"""Model calls through LiteLLM: one call per try, no retries here (the node policy owns them).

``chiffon/*`` models are answered in-process by the offline model, without LiteLLM:
it stands in for a provider so examples and tests run offline, and it must cost
microseconds, not LiteLLM's milliseconds, or it would hide Chiffon's own overhead.
The real provider path is tested against an OpenAI-compatible HTTP server.

LiteLLM is imported once, when the executor starts (``LlmGateway.setup``), never on a
run's path. Its price map is the bundled local copy (``LITELLM_LOCAL_MODEL_COST_MAP``),
so nothing is fetched at import. OpenAI-style calls use LiteLLM's own HTTP handler
(see below). LiteLLM's pricing and success logging, which Chiffon does not read, are
skipped while no LiteLLM callback reads them either (``litellm_lean``). Provider keys
and base URLs come from the environment as LiteLLM reads them (``OPENAI_API_KEY``,
``OPENAI_API_BASE``, ...).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from chiffon.core.logging import get_logger
from chiffon.executor import offline
from chiffon.executor.litellm_lean import skip_unused_bookkeeping

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# OpenAI and OpenAI-compatible calls through LiteLLM's own HTTP handler rather than the
# openai SDK, whose request transformation (hashing typing generics) costs about 2 ms of
# CPU per call: a third of all the CPU a call takes. Set it to "false" to use the SDK.
os.environ.setdefault("EXPERIMENTAL_OPENAI_BASE_LLM_HTTP_HANDLER", "true")

log = get_logger(__name__)

# Providers that run locally and need no key.
_KEYLESS = frozenset(
    {"ollama", "ollama_chat", "lm_studio", "vllm", "hosted_vllm", "llamafile", "chiffon"}
)


class ProviderError(Exception):
    """The provider did not answer (network, HTTP error, refusal, rate limit, timeout)."""

    def __init__(self, model: str, message: str, *, kind: str = "provider_error") -> None:
        super().__init__(message)
        self.model = model
        self.kind = kind


@dataclass(frozen=True, slots=True)
class LlmReply:
    text: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    finish_reason: str | None


class LlmGateway:
    """Calls models by LiteLLM model string; answers ``chiffon/*`` offline."""

    def __init__(self, *, offline_mode: str = "auto", environment: str = "development") -> None:
        self.offline_mode = offline_mode
        self.environment = environment
        self._litellm: Any = None
        self._resolved: dict[str, tuple[str, str]] = {}

    def setup(self) -> None:
        """Import and configure LiteLLM (seconds, once per process)."""
        if self._litellm is not None:
            return
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        litellm.drop_params = True  # a provider that lacks a parameter ignores it
        skip_unused_bookkeeping(litellm)
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

    # -- which model answers --------------------------------------------------------

    def resolve(self, model: str) -> tuple[str, str]:
        """(model to call, its provider): ``chiffon/echo`` when offline applies."""
        found = self._resolved.get(model)
        if found is None:
            found = self._resolved[model] = self._resolve(model)
        return found

    def _resolve(self, model: str) -> tuple[str, str]:
        provider = self._provider(model)
        if provider == offline.PROVIDER:
            return model, provider
        if self.offline_mode == "always":
            return offline.MODEL, offline.PROVIDER
        if (
            self.offline_mode == "auto"
            and self.environment != "production"
            and not self._configured(model, provider)
        ):
            log.warning(
                "llm.offline_model",
                model=model,
                answered_by=offline.MODEL,
                reason=f"no key for provider {provider!r} in the environment",
            )
            return offline.MODEL, offline.PROVIDER
        return model, provider

    def _provider(self, model: str) -> str:
        if model.startswith(f"{offline.PROVIDER}/"):
            return offline.PROVIDER
        self.setup()
        try:
            return str(self._litellm.get_llm_provider(model)[1])
        except Exception:  # noqa: BLE001 — an unknown provider fails at call time, clearly
            return model.split("/", 1)[0]

    def _configured(self, model: str, provider: str) -> bool:
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

    def in_process(self, model: str) -> bool:
        """Whether the offline model answers ``model``: in microseconds, in this process."""
        return self.resolve(model)[1] == offline.PROVIDER

    async def complete(
        self,
        model: str,
        messages: list[dict[str, str]],
        *,
        response_format: dict[str, Any] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float | None = None,
    ) -> LlmReply:
        """One call to one model; ``ProviderError`` on any provider failure."""
        target, provider = self.resolve(model)
        if provider == offline.PROVIDER:
            return offline.answer(target, messages, response_format)
        self.setup()
        params: dict[str, Any] = {}
        if response_format is not None:
            params["response_format"] = response_format
        if temperature is not None:
            params["temperature"] = temperature
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if timeout is not None:
            params["timeout"] = max(0.05, timeout)
        started = time.perf_counter()
        try:
            response = await self._litellm.acompletion(
                model=target,
                messages=messages,
                num_retries=0,  # the node's retry policy owns retries
                **params,
            )
        except Exception as error:  # noqa: BLE001 — every provider failure, typed below
            kind = "timeout" if "timeout" in type(error).__name__.lower() else "provider_error"
            message = f"{target}: {type(error).__name__}: {error}"
            raise ProviderError(target, message[:3900], kind=kind) from None
        latency = (time.perf_counter() - started) * 1000
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        return LlmReply(
            text=str(getattr(choice.message, "content", None) or ""),
            provider=provider,
            model=target,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_ms=latency,
            finish_reason=getattr(choice, "finish_reason", None),
        )
