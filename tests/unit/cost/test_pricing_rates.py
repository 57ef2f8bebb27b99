"""The pricer's per-call path (a model's ``CallRate``, found once) prices a call as the
documented formula does, to the digit that lands on the cost event, for every source of
a price: the map (with cached, cache-write and reasoning tokens), an override, a local
model, and a model no price is known for."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from chiffon.cost.pricing import RunOrigin, calls_priced, priced_call, read_work
from chiffon.events import Actor, new_event
from chiffon.events.runs import LlmCalled
from chiffon.spend.prices import PriceBook

BOOK = PriceBook.load(
    {"hosted_vllm/my-llama": {"input_per_million": "0.20", "output_per_million": "0.30"}}
)
EXECUTOR = Actor.service("executor", 1)


def formula(provider: str, model: str, tokens: dict[str, int]) -> Decimal:
    """The cost of docs/costs.md, written out term by term."""
    price = BOOK.price_of(provider, model)
    assert price is not None and price.input is not None and price.output is not None
    prompt, completion = tokens["prompt_tokens"], tokens["completion_tokens"]
    cached, written = tokens.get("cached_read_tokens", 0), tokens.get("cache_write_tokens", 0)
    reasoning = tokens.get("reasoning_tokens", 0)
    cost = (prompt - cached - written) * price.input + (completion - reasoning) * price.output
    if cached:
        cost += cached * (price.cache_read if price.cache_read is not None else price.input)
    if written:
        cost += written * (price.cache_write if price.cache_write is not None else price.input)
    if reasoning:
        cost += reasoning * (price.reasoning if price.reasoning is not None else price.output)
    return cost


def priced(provider: str, model: str, tokens: dict[str, int]) -> Any:
    """The pricer's cost event for one call: its cost and source as stored."""
    payload = LlmCalled.model_validate(
        {"node_id": "n", "attempt": 1, "provider": provider, "model": model, "latency_ms": 1.0}
        | tokens
    )
    event = new_event(payload, aggregate_id="run-1", actor=EXECUTOR)
    _, call = read_work(event.model_dump_json().encode())
    row, prices = priced_call(BOOK, call, RunOrigin("wf", None))  # type: ignore[arg-type]
    batch, bad = calls_priced([row], {(provider, model): prices}, BOOK.version)
    assert batch is not None and not bad
    return batch


@pytest.mark.parametrize(
    ("provider", "model", "tokens"),
    [
        ("openai", "openai/gpt-4o-mini", {"prompt_tokens": 1200, "completion_tokens": 90}),
        (
            "anthropic",
            "anthropic/claude-haiku-4-5-20251001",
            {
                "prompt_tokens": 5000,
                "completion_tokens": 300,
                "cached_read_tokens": 3000,
                "cache_write_tokens": 1500,
            },
        ),
        (
            "dashscope",
            "dashscope/qwen-turbo",
            {"prompt_tokens": 10, "completion_tokens": 50, "reasoning_tokens": 40},
        ),
        (
            "openai",
            "o3-mini",
            {"prompt_tokens": 0, "completion_tokens": 50, "reasoning_tokens": 40},
        ),
        ("hosted_vllm", "hosted_vllm/my-llama", {"prompt_tokens": 700, "completion_tokens": 70}),
    ],
)
def test_a_call_costs_the_documented_formula_to_the_digit(
    provider: str, model: str, tokens: dict[str, int]
) -> None:
    batch = priced(provider, model, tokens)
    expected = formula(provider, model, tokens)
    assert batch.cost_usd == [expected]
    assert str(batch.cost_usd[0]) == str(expected)  # the same digits on the event
    assert batch.source == [BOOK.source_of(provider, model)]
    assert BOOK.price_call(provider, model, **tokens).cost_usd == expected


def test_a_local_model_costs_zero_and_an_unknown_one_is_recorded_unknown() -> None:
    local = priced(
        "ollama_chat", "ollama_chat/llama3.1", {"prompt_tokens": 9, "completion_tokens": 9}
    )
    assert (local.cost_usd, local.source) == ([Decimal(0)], ["local"])
    unknown = priced(
        "openai", "openai/no-such-model-x1", {"prompt_tokens": 1, "completion_tokens": 1}
    )
    assert (unknown.cost_usd, unknown.source) == ([None], ["unknown"])
    assert unknown.prices_of("openai", "openai/no-such-model-x1").input is None


def test_a_models_rate_is_found_once() -> None:
    assert BOOK.rate("openai", "openai/gpt-4o-mini") is BOOK.rate("openai", "openai/gpt-4o-mini")
