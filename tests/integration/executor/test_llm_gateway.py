"""The model gateway against the OpenAI-compatible test server: LiteLLM's real path."""

from __future__ import annotations

from typing import Any

import pytest

from chiffon.executor.models import ModelGateway, ModelRequest, ProviderError
from tests.support.fixtures import eventually

from .graph_support import provider  # noqa: F401 — the autouse test server
from .openai_server import FakeOpenAI

MESSAGES = [{"role": "user", "content": "Name three owls."}]
OWLS = ModelRequest(model="openai/gpt-4o-mini", messages=MESSAGES)


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Any:
    """LiteLLM set up by a gateway, its callback lists emptied for the test and restored."""
    ModelGateway(offline_mode="never").setup()
    import litellm as module

    for name in ("callbacks", "success_callback", "_async_success_callback"):
        monkeypatch.setattr(module, name, [])
    return module


async def test_a_call_answers_with_the_providers_text_and_tokens(
    litellm: Any, provider: FakeOpenAI
) -> None:
    reply = await ModelGateway(offline_mode="never").complete(OWLS)

    assert reply.text.startswith("echo: Name three owls.")
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    assert (reply.provider, reply.model) == ("openai", "openai/gpt-4o-mini")
    assert len(provider.requests) == 1


async def test_with_no_litellm_callback_litellm_prices_nothing(litellm: Any) -> None:
    # Chiffon reads tokens, not LiteLLM's price: pricing each response is skipped.
    response = await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES)

    assert response.usage.prompt_tokens > 0
    assert response._hidden_params.get("response_cost") is None


async def test_a_litellm_callback_still_gets_every_call_priced(litellm: Any) -> None:
    from litellm.integrations.custom_logger import CustomLogger

    seen: list[dict[str, Any]] = []

    class Recorder(CustomLogger):  # type: ignore[misc]
        async def async_log_success_event(
            self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
        ) -> None:
            seen.append(kwargs)

    litellm.callbacks = [Recorder()]
    response = await litellm.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES)

    assert response._hidden_params["response_cost"] > 0

    async def called() -> bool:
        return bool(seen)

    await eventually(called, timeout=5, message="the LiteLLM callback was not called")
    assert seen[0]["response_cost"] > 0


async def test_a_refused_call_is_one_call_named_by_its_cause(
    litellm: Any, provider: FakeOpenAI
) -> None:
    provider.fail_next(401, message="Incorrect API key provided", code="invalid_api_key")

    with pytest.raises(ProviderError) as refused:
        await ModelGateway(offline_mode="never").complete(OWLS)

    assert (refused.value.kind, refused.value.retryable) == ("provider_auth", False)
    assert (refused.value.model, refused.value.provider) == ("openai/gpt-4o-mini", "openai")
    assert len(provider.requests) == 1  # LiteLLM retried nothing: the node's policy decides


async def test_a_rate_limit_says_how_long_the_provider_asked_to_wait(
    litellm: Any, provider: FakeOpenAI
) -> None:
    provider.fail_next(429, headers={"Retry-After": "2"}, code="rate_limit_exceeded")

    with pytest.raises(ProviderError) as limited:
        await ModelGateway(offline_mode="never").complete(OWLS)

    assert (limited.value.kind, limited.value.retryable) == ("provider_rate_limit", True)
    assert limited.value.retry_after == 2.0
    assert len(provider.requests) == 1


async def test_chiffon_models_are_answered_in_process(provider: FakeOpenAI) -> None:
    gateway = ModelGateway(offline_mode="never")
    request = ModelRequest(model="chiffon/echo", messages=MESSAGES)

    reply = await gateway.complete(request)

    assert gateway.in_process("chiffon/echo")
    assert (reply.text, reply.provider) == ("echo: Name three owls.", "chiffon")
    assert provider.requests == []


async def test_a_context_window_overflow_and_a_content_refusal_are_named(
    litellm: Any, provider: FakeOpenAI
) -> None:
    provider.fail_next(
        400,
        message="This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens. Please reduce the length of the messages.",
        code="context_length_exceeded",
    )
    provider.fail_next(
        400,
        message="Your request was rejected as a result of our safety system.",
        code="content_policy_violation",
    )
    gateway = ModelGateway(offline_mode="never")

    kinds = []
    for _ in range(2):
        with pytest.raises(ProviderError) as refused:
            await gateway.complete(OWLS)
        kinds.append((refused.value.kind, refused.value.retryable))

    assert kinds == [("context_window_exceeded", False), ("content_policy", False)]
    assert len(provider.requests) == 2
