"""The model gateway against the OpenAI-compatible test server: LiteLLM's real path."""

from __future__ import annotations

from typing import Any

import pytest

from chiffon.executor.llm import LlmGateway
from tests.support.fixtures import eventually

from .graph_support import provider  # noqa: F401 — the autouse test server
from .openai_server import FakeOpenAI

MESSAGES = [{"role": "user", "content": "Name three owls."}]


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Any:
    """LiteLLM set up by a gateway, its callback lists emptied for the test and restored."""
    LlmGateway(offline_mode="never").setup()
    import litellm as module

    for name in ("callbacks", "success_callback", "_async_success_callback"):
        monkeypatch.setattr(module, name, [])
    return module


async def test_a_call_answers_with_the_providers_text_and_tokens(
    litellm: Any, provider: FakeOpenAI
) -> None:
    reply = await LlmGateway(offline_mode="never").complete("openai/gpt-4o-mini", MESSAGES)

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
