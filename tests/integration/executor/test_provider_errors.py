"""Provider failures over the real model path (LiteLLM against the OpenAI-compatible test
server): what no retry can cure fails at once and says why; a rate limit is retried no
sooner than the provider asked."""

from __future__ import annotations

from chiffon.events.runs import LlmCalled, NodeFailed

from .graph_support import (  # noqa: F401 — provider: the autouse test server
    RunLog,
    last,
    provider,
    run,
    types,
)
from .openai_server import FakeOpenAI

# Three attempts, 10 ms apart: were a refusal retried, the server would see three calls;
# were a Retry-After ignored, the second call would come 10 ms after the first.
ASK = """
name: ask
version: 1
defaults: {model: openai/main, retry: {attempts: 3, backoff: {initial: 10ms}}}
nodes:
  - {id: ask, type: llm, prompt: "q", output: {answer: string}}
"""


async def failures(log: RunLog) -> list[NodeFailed]:
    return [e.payload for e in await log.of() if e.type == "run.node.failed"]


async def test_a_bad_key_fails_the_node_at_once_and_says_so(
    log: RunLog, provider: FakeOpenAI
) -> None:
    provider.fail_next(401, message="Incorrect API key provided: sk-test", code="invalid_api_key")

    outcome, _, _ = await run(log, ASK)

    assert outcome == "failed"
    assert len(provider.requests) == 1  # one call reached the provider, none was retried
    [failed] = await failures(log)
    assert (failed.attempt, failed.error.type, failed.will_retry) == (1, "provider_auth", False)
    assert failed.retry_in_ms is None
    run_failed = await last(log, "run.failed")
    assert (run_failed.error.type, run_failed.error.node_id) == ("provider_auth", "ask")
    assert "Incorrect API key provided" in run_failed.error.message
    assert (await types(log))[-4:] == [
        "run.node.started",
        "run.llm.called",
        "run.node.failed",
        "run.failed",
    ]


async def test_a_bad_request_is_not_retried_either(log: RunLog, provider: FakeOpenAI) -> None:
    provider.fail_next(400, message="Invalid 'temperature': decimal above maximum value.")

    outcome, _, _ = await run(log, ASK)

    assert outcome == "failed"
    assert len(provider.requests) == 1
    assert (await last(log, "run.failed")).error.type == "provider_bad_request"


async def test_a_rate_limit_is_retried_after_the_providers_retry_after(
    log: RunLog, provider: FakeOpenAI
) -> None:
    provider.fail_next(
        429,
        headers={"Retry-After": "1"},
        message="Rate limit reached for requests",
        error_type="requests",
        code="rate_limit_exceeded",
    )

    outcome, _, _ = await run(log, ASK)

    assert outcome == "succeeded"
    first, second = provider.requests
    assert second.at - first.at >= 0.9  # as the server saw them: the wait it asked for
    [failed] = await failures(log)
    assert (failed.attempt, failed.error.type, failed.will_retry) == (
        1,
        "provider_rate_limit",
        True,
    )
    assert failed.retry_in_ms == 1000
    assert (await last(log, "run.node.completed")).attempt == 2


async def test_a_refusal_still_falls_back_to_the_next_model(
    log: RunLog, provider: FakeOpenAI
) -> None:
    # A bad key for one provider says nothing of the next: fallbacks are still tried.
    provider.fail_next(401, message="Incorrect API key provided", code="invalid_api_key")
    source = ASK.replace("openai/main,", "openai/main, fallbacks: [openai/spare],")

    outcome, _, _ = await run(log, source)

    assert outcome == "succeeded"
    calls: list[LlmCalled] = [e.payload for e in await log.of() if e.type == "run.llm.called"]
    assert [(c.model, c.ok) for c in calls] == [("openai/main", False), ("openai/spare", True)]
    assert await failures(log) == []
