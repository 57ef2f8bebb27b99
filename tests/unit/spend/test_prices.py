"""Prices from LiteLLM's bundled map, in exact decimals, with overrides and local models."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from chiffon.spend.prices import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    ModelPrice,
    PriceBook,
    count_prompt_tokens,
)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load()


def test_the_version_names_the_installed_litellm(book: PriceBook) -> None:
    import importlib.metadata

    assert book.version == f"litellm-{importlib.metadata.version('litellm')}"


def test_a_known_openai_model_is_priced_from_the_map_to_the_exact_decimal(book: PriceBook) -> None:
    # gpt-4o-mini: input 1.5e-07, output 6e-07 per token in the map.
    priced = book.price_call("openai", "openai/gpt-4o-mini", prompt_tokens=11, completion_tokens=7)
    assert priced.source == "price_map"
    assert priced.cost_usd == Decimal("11") * Decimal("0.00000015") + Decimal("7") * Decimal(
        "0.0000006"
    )
    assert priced.cost_usd == Decimal("0.00000585")
    # Bare and prefixed names are the same model.
    assert book.price_of("openai", "gpt-4o-mini") == book.price_of("openai", "openai/gpt-4o-mini")


def test_cached_read_tokens_are_priced_at_the_cache_read_price(book: PriceBook) -> None:
    price = book.price_of("openai", "openai/gpt-4o-mini")
    assert price is not None and price.cache_read == Decimal("0.000000075")
    priced = book.price_call(
        "openai",
        "openai/gpt-4o-mini",
        prompt_tokens=1000,
        completion_tokens=10,
        cached_read_tokens=600,
    )
    expected = (
        400 * Decimal("0.00000015") + 600 * Decimal("0.000000075") + 10 * Decimal("0.0000006")
    )
    assert priced.cost_usd == expected == Decimal("0.000111")


def test_cache_write_tokens_are_priced_at_the_cache_creation_price(book: PriceBook) -> None:
    price = book.price_of("anthropic", "anthropic/claude-haiku-4-5-20251001")
    assert price is not None
    assert (price.input, price.cache_read, price.cache_write, price.output) == (
        Decimal("0.000001"),
        Decimal("1E-7"),
        Decimal("0.00000125"),
        Decimal("0.000005"),
    )
    priced = book.price_call(
        "anthropic",
        "anthropic/claude-haiku-4-5-20251001",
        prompt_tokens=3000,
        completion_tokens=100,
        cached_read_tokens=1000,
        cache_write_tokens=1500,
    )
    expected = (
        500 * Decimal("0.000001")
        + 1000 * Decimal("0.0000001")
        + 1500 * Decimal("0.00000125")
        + 100 * Decimal("0.000005")
    )
    assert priced.cost_usd == expected == Decimal("0.002975")


def test_reasoning_tokens_are_priced_at_the_reasoning_price_where_the_map_has_one(
    book: PriceBook,
) -> None:
    price = book.price_of("dashscope", "dashscope/qwen-turbo")
    assert price is not None and price.reasoning == Decimal("5E-7")
    priced = book.price_call(
        "dashscope",
        "dashscope/qwen-turbo",
        prompt_tokens=10,
        completion_tokens=50,
        reasoning_tokens=40,
    )
    expected = 10 * Decimal("5E-8") + 10 * Decimal("2E-7") + 40 * Decimal("5E-7")
    assert priced.cost_usd == expected == Decimal("0.0000225")
    # Without a reasoning price (o3-mini), reasoning tokens cost what output costs.
    o3 = book.price_call(
        "openai", "o3-mini", prompt_tokens=0, completion_tokens=50, reasoning_tokens=40
    )
    assert o3.cost_usd == 50 * Decimal("0.0000044")


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("ollama_chat", "ollama_chat/llama3.1"),
        ("ollama", "ollama/mistral"),
        ("chiffon", "chiffon/echo"),
    ],
)
def test_local_models_cost_exactly_zero(book: PriceBook, provider: str, model: str) -> None:
    priced = book.price_call(provider, model, prompt_tokens=5000, completion_tokens=900)
    assert priced.cost_usd == Decimal(0) and priced.source == "local"
    assert book.is_zero_cost(provider, model)
    assert book.worst_case(provider, model, prompt_tokens=10**6, max_output_tokens=None) == 0


def test_an_unknown_model_is_unknown_never_free(book: PriceBook) -> None:
    priced = book.price_call(
        "openai", "openai/no-such-model-x1", prompt_tokens=1, completion_tokens=1
    )
    assert priced.cost_usd is None and priced.source == "unknown" and priced.prices is None
    assert book.price_of("openai", "openai/no-such-model-x1") is None
    assert not book.is_zero_cost("openai", "openai/no-such-model-x1")
    assert (
        book.worst_case("openai", "openai/no-such-model-x1", prompt_tokens=1, max_output_tokens=1)
        is None
    )


def test_a_model_of_another_provider_is_not_priced_as_openais() -> None:
    book = PriceBook.load()
    assert book.price_of("someproxy", "someproxy/gpt-4o-mini") is None


def test_an_override_wins_over_the_map_and_prices_unknown_models() -> None:
    book = PriceBook.load(
        {
            "openai/gpt-4o-mini": {"input_per_token": "0.000001", "output_per_token": 0.000002},
            "openai/my-finetune": {"input_per_million": "3", "output_per_million": "12.5"},
            "openai/free-for-us": {"input_per_token": "0", "output_per_token": "0"},
        }
    )
    mini = book.price_call("openai", "openai/gpt-4o-mini", prompt_tokens=10, completion_tokens=10)
    assert mini.source == "override" and mini.cost_usd == Decimal("0.00003")
    # Fields the override does not give come from the map.
    assert mini.prices is not None and mini.prices.cache_read == Decimal("0.000000075")
    tuned = book.price_call(
        "openai", "openai/my-finetune", prompt_tokens=1000, completion_tokens=100
    )
    assert tuned.source == "override" and tuned.cost_usd == Decimal("0.00425")
    assert book.is_zero_cost("openai", "openai/free-for-us")
    # The book without overrides is untouched.
    assert PriceBook.load().source_of("openai", "openai/gpt-4o-mini") == "price_map"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"openai/x": {"input_per_token": "-1", "output_per_token": "1"}}, "non-negative decimal"),
        ({"openai/x": {"input_per_token": "abc", "output_per_token": "1"}}, "non-negative decimal"),
        ({"openai/x": {"inptu_per_token": "1"}}, "unknown field 'inptu_per_token'"),
        ({"openai/unknown-thing": {"input_per_token": "1"}}, "needs both"),
    ],
)
def test_a_bad_override_is_refused_with_its_reason(overrides: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        PriceBook.load(overrides)


def test_worst_case_takes_the_models_output_limit_when_the_node_gives_none(book: PriceBook) -> None:
    price = book.price_of("openai", "openai/gpt-4o-mini")
    assert price is not None and price.max_output_tokens == 16384
    worst = book.worst_case(
        "openai", "openai/gpt-4o-mini", prompt_tokens=100, max_output_tokens=None
    )
    assert worst == 100 * Decimal("0.00000015") + 16384 * Decimal("0.0000006")
    given = book.worst_case("openai", "openai/gpt-4o-mini", prompt_tokens=100, max_output_tokens=50)
    assert given == 100 * Decimal("0.00000015") + 50 * Decimal("0.0000006")


def test_worst_case_bounds_every_real_price_of_the_same_tokens(book: PriceBook) -> None:
    model = "anthropic/claude-haiku-4-5-20251001"
    worst = book.worst_case("anthropic", model, prompt_tokens=1000, max_output_tokens=200)
    real = book.price_call(
        "anthropic", model, prompt_tokens=1000, completion_tokens=200, cache_write_tokens=1000
    ).cost_usd
    assert worst is not None and real is not None and real <= worst


def test_worst_case_falls_back_to_a_default_output_bound() -> None:
    book = PriceBook({}, "test", {"x/y": ModelPrice(input=Decimal(1), output=Decimal(2))})
    assert (
        book.worst_case("x", "x/y", prompt_tokens=1, max_output_tokens=None)
        == 1 + 2 * DEFAULT_MAX_OUTPUT_TOKENS
    )


def test_count_prompt_tokens_is_an_upper_bound_and_cheap() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Grüße aus Köln — wie spät ist es?"},
    ]
    counted = count_prompt_tokens(messages)
    # Every byte of every field, plus the per-message overhead.
    assert counted >= sum(len(v.encode()) for m in messages for v in m.values())
    assert count_prompt_tokens([]) > 0
    big = [{"role": "user", "content": "word " * 2000}] * 10
    started = time.perf_counter()
    for _ in range(1000):
        count_prompt_tokens(big)
    assert (time.perf_counter() - started) / 1000 < 0.001


def test_the_map_loads_once_without_importing_litellm() -> None:
    import subprocess
    import sys

    code = (
        "import time; t=time.perf_counter(); from chiffon.spend.prices import PriceBook; "
        "b=PriceBook.load(); b.price_of('openai','gpt-4o'); "
        "print(time.perf_counter()-t); import sys; print('litellm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    _, imported = out.stdout.split()
    assert imported == "False"  # never imports litellm itself (its import takes seconds)
    assert PriceBook.load() is PriceBook.load()


def test_price_overrides_are_read_from_the_environment_and_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from chiffon.core.settings import ChiffonSettings

    monkeypatch.setenv(
        "CHIFFON_PRICE_OVERRIDES",
        '{"openai/x": {"input_per_token": "0.1", "output_per_million": 3}}',
    )
    assert ChiffonSettings().price_overrides == {
        "openai/x": {"input_per_token": "0.1", "output_per_million": 3}
    }
    monkeypatch.setenv("CHIFFON_PRICE_OVERRIDES", '{"openai/x": {"input_per_token": "-0.1"}}')
    with pytest.raises(ValidationError, match="input_per_token must be a non-negative decimal"):
        ChiffonSettings()
    monkeypatch.setenv("CHIFFON_PRICE_OVERRIDES", '{"openai/x": {"per_token": "1"}}')
    with pytest.raises(ValidationError, match="unknown field 'per_token'"):
        ChiffonSettings()
