"""What an LLM call costs: LiteLLM's bundled price map, read offline, priced in exact decimals.

The map is the JSON file LiteLLM ships beside its ``__init__.py``
(``model_prices_and_context_window_backup.json``), read with ``json`` rather than by
importing LiteLLM: the import costs seconds of CPU, the file about 50 ms, once per process.
Nothing is fetched from the network. Every price is converted with ``Decimal(str(x))``, so
``1.5e-07`` stays exactly ``0.00000015`` and a report of a million calls adds up to the cent.

A call's price comes from, in this order:

1. a local provider (``ollama``, ``ollama_chat``, the offline ``chiffon/*`` models): exactly
   0, source ``local``;
2. an override from settings (``CHIFFON_PRICE_OVERRIDES``), merged over the map's entry:
   source ``override``;
3. the map: source ``price_map``;
4. nowhere: the cost is ``None`` (unknown, never zero), source ``unknown``.

Token accounting follows OpenAI-style usage, as ``run.llm.called`` records it:
``prompt_tokens`` includes the cached tokens read and written, which are priced at
``cache_read`` / ``cache_write`` instead of ``input`` (at ``input`` when the map has no such
price); ``completion_tokens`` includes the reasoning tokens, priced at ``reasoning`` when the
map has one, else at ``output``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeGuard

from chiffon.events.costs import PriceSource

MAP_FILE = "model_prices_and_context_window_backup.json"

LOCAL_PROVIDERS = frozenset({"ollama", "ollama_chat", "chiffon"})
"""Providers that run on our own machines: a call to them costs exactly 0."""

DEFAULT_MAX_OUTPUT_TOKENS = 16_384
"""The output bound of a worst case when neither the node nor the map gives one."""

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens a chat message adds around its contents (role and separators; OpenAI's is 3-4)."""

REPLY_PRIMING_TOKENS = 3

ZERO = Decimal(0)
_MILLION = Decimal(1_000_000)

# The override fields, and the ModelPrice field each sets.
_OVERRIDE_FIELDS = {
    "input": "input",
    "output": "output",
    "cache_read": "cache_read",
    "cache_write": "cache_write",
    "reasoning": "reasoning",
}
OVERRIDE_KEYS = frozenset(
    {f"{name}_per_token" for name in _OVERRIDE_FIELDS}
    | {f"{name}_per_million" for name in _OVERRIDE_FIELDS}
    | {"max_output_tokens"}
)
"""The keys a price override may hold: ``input_per_token`` (or ``input_per_million``),
``output_*``, ``cache_read_*``, ``cache_write_*``, ``reasoning_*``, ``max_output_tokens``."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token prices in US dollars (None: the map gives no such price)."""

    input: Decimal | None
    output: Decimal | None
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    max_output_tokens: int | None = None

    @property
    def is_zero(self) -> bool:
        return all(
            price is None or price == 0
            for price in (
                self.input,
                self.output,
                self.cache_read,
                self.cache_write,
                self.reasoning,
            )
        )


@dataclass(frozen=True, slots=True)
class PricedCall:
    """One call's cost (None: unknown), where its price came from, and the prices used."""

    cost_usd: Decimal | None
    source: PriceSource
    prices: ModelPrice | None


@dataclass(frozen=True, slots=True)
class CallRate:
    """A model's prices as pricing a call applies them, found once per model
    (``PriceBook.rate``): the fallbacks (cache prices at the input price, reasoning at
    the output price) resolved, so that pricing a call is its arithmetic only. The
    pricer's per-call step cost 2-3 times as much CPU through ``price_call`` (keywords,
    a lookup, a ``PricedCall`` per call): 32-55 us against 16-18 us per call, best of 15
    over 5,000 calls, on the shared 2-core machine at load 12-15."""

    source: PriceSource
    prices: ModelPrice | None  # None: unknown
    input: Decimal = ZERO
    output: Decimal = ZERO
    cache_read: Decimal = ZERO
    cache_write: Decimal = ZERO
    reasoning: Decimal = ZERO

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> Decimal | None:
        """The exact cost of one call from its token counts (None: the price is
        unknown; exactly 0 for a local model)."""
        if self.prices is None:
            return None
        if self.source == "local":
            return ZERO
        cached_read = min(cached_read_tokens, prompt_tokens)
        cache_write = min(cache_write_tokens, prompt_tokens - cached_read)
        reasoning = min(reasoning_tokens, completion_tokens)
        cost = (prompt_tokens - cached_read - cache_write) * self.input + (
            completion_tokens - reasoning
        ) * self.output
        # A term only for the tokens there are: the same Decimal (digits and exponent)
        # as the formula written out in the docs.
        if cached_read:
            cost += cached_read * self.cache_read
        if cache_write:
            cost += cache_write * self.cache_write
        if reasoning:
            cost += reasoning * self.reasoning
        return cost


def _rate(price: ModelPrice | None, source: PriceSource) -> CallRate:
    if price is None or source == "local":
        return CallRate(source, price)
    assert price.input is not None and price.output is not None
    return CallRate(
        source,
        price,
        price.input,
        price.output,
        price.input if price.cache_read is None else price.cache_read,
        price.input if price.cache_write is None else price.cache_write,
        price.output if price.reasoning is None else price.reasoning,
    )


_LOCAL_PRICE = ModelPrice(
    input=ZERO, output=ZERO, cache_read=ZERO, cache_write=ZERO, reasoning=ZERO
)


class PriceBook:
    """The prices of every model the map or an override knows. Pure after ``load``."""

    def __init__(
        self,
        price_map: Mapping[str, Any],
        version: str,
        overrides: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        self._map = price_map
        self.version = version
        self._overrides = dict(overrides or {})
        self._found: dict[tuple[str, str], tuple[ModelPrice | None, PriceSource]] = {}
        self._rates: dict[tuple[str, str], CallRate] = {}

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def load(cls, overrides: Mapping[str, Mapping[str, str | float]] | None = None) -> PriceBook:
        """The price book of the installed LiteLLM's map with these overrides (once per
        process for each distinct set of overrides). ``ValueError`` for a bad override."""
        cache_key = json.dumps(overrides or {}, sort_keys=True, default=str)
        with _LOCK:
            book = _BOOKS.get(cache_key)
            if book is None:
                price_map, version = _bundled_map()
                parsed = {
                    name: _parse_override(name, fields, _map_entry(price_map, name))
                    for name, fields in (overrides or {}).items()
                }
                book = cls(price_map, version, parsed)
                _BOOKS[cache_key] = book
            return book

    # -- queries ------------------------------------------------------------------------

    def price_of(self, provider: str, model: str) -> ModelPrice | None:
        """The model's prices, or None when neither the map nor an override knows it."""
        return self._lookup(provider, model)[0]

    def source_of(self, provider: str, model: str) -> PriceSource:
        return self._lookup(provider, model)[1]

    def is_zero_cost(self, provider: str, model: str) -> bool:
        """A local provider, or a model priced 0 (by the map or an override). An unknown
        model is not zero-cost."""
        price = self._lookup(provider, model)[0]
        return price is not None and price.is_zero

    def price_call(
        self,
        provider: str,
        model: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cached_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> PricedCall:
        """The exact cost of one call from its token counts."""
        rate = self.rate(provider, model)
        cost = rate.cost(
            prompt_tokens,
            completion_tokens,
            cached_read_tokens,
            cache_write_tokens,
            reasoning_tokens,
        )
        return PricedCall(cost_usd=cost, source=rate.source, prices=rate.prices)

    def rate(self, provider: str, model: str) -> CallRate:
        """The model's ``CallRate`` (the same object each time)."""
        rate = self._rates.get((provider, model))
        if rate is None:
            rate = self._rates[(provider, model)] = _rate(*self._lookup(provider, model))
        return rate

    def worst_case(
        self, provider: str, model: str, *, prompt_tokens: int, max_output_tokens: int | None
    ) -> Decimal | None:
        """The most a call can cost: every prompt token at the dearest input price (writing
        a cache can cost more than reading plain input), and the output bound (the node's,
        else the model's own, else ``DEFAULT_MAX_OUTPUT_TOKENS``) at the dearest output
        price. None when the price is unknown."""
        price, source = self._lookup(provider, model)
        if price is None:
            return None
        if source == "local":
            return ZERO
        assert price.input is not None and price.output is not None
        out_tokens = max_output_tokens or price.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS
        in_price = max(price.input, price.cache_write or ZERO)
        out_price = max(price.output, price.reasoning or ZERO)
        return prompt_tokens * in_price + out_tokens * out_price

    # -- lookup ---------------------------------------------------------------------------

    def _lookup(self, provider: str, model: str) -> tuple[ModelPrice | None, PriceSource]:
        found = self._found.get((provider, model))
        if found is None:
            found = self._find(provider, model)
            self._found[(provider, model)] = found
        return found

    def _find(self, provider: str, model: str) -> tuple[ModelPrice | None, PriceSource]:
        names = _candidates(provider, model)
        for name in names:
            override = self._overrides.get(name)
            if override is not None:
                return override, "override"
        if is_local(provider, model):
            return _LOCAL_PRICE, "local"
        for name in names:
            entry = self._map.get(name)
            if _priced(entry) and _provider_matches(entry, provider, name, model):
                return _model_price(entry), "price_map"
        return None, "unknown"


def is_local(provider: str, model: str) -> bool:
    """A provider that runs on our own machines (``ollama*``, ``chiffon/*``)."""
    return provider in LOCAL_PROVIDERS or model.split("/", 1)[0] in LOCAL_PROVIDERS


def count_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """An upper bound of a prompt's tokens, offline and in microseconds: the UTF-8 bytes of
    every message's fields (a byte-level BPE token covers at least one byte) plus a
    per-message overhead. It overestimates English text about fourfold, which errs on the
    side of a budget, never against it."""
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        for value in message.values():
            if isinstance(value, str):
                total += len(value) if value.isascii() else len(value.encode("utf-8"))
    return total


# -- the map ------------------------------------------------------------------------------

_LOCK = threading.Lock()
_BOOKS: dict[str, PriceBook] = {}
_MAP: tuple[Mapping[str, Any], str] | None = None


def _bundled_map() -> tuple[Mapping[str, Any], str]:
    global _MAP
    if _MAP is None:
        spec = importlib.util.find_spec("litellm")
        if spec is None or spec.origin is None:
            raise RuntimeError("litellm is not installed: no price map to read")
        path = Path(spec.origin).parent / MAP_FILE
        with path.open("rb") as file:
            data = json.load(file)
        _MAP = (data, f"litellm-{importlib.metadata.version('litellm')}")
    return _MAP


def _candidates(provider: str, model: str) -> list[str]:
    """The names a model may go by in the map: as called (``openai/gpt-4o-mini``), with its
    provider (``gpt-4o-mini`` called on ``openai``), and without the provider prefix."""
    names = [model]
    head, sep, rest = model.partition("/")
    if sep and rest:
        names.append(rest)
    if head != provider:
        names.append(f"{provider}/{model}")
    return names


def _priced(entry: Any) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("input_cost_per_token"), int | float)
        and isinstance(entry.get("output_cost_per_token"), int | float)
    )


def _provider_matches(entry: Mapping[str, Any], provider: str, name: str, model: str) -> bool:
    """A name found by dropping the model's prefix must be the same provider's model
    (``azure/gpt-4o`` is not priced as OpenAI's ``gpt-4o`` unless the map says so)."""
    if name == model or "/" in name:
        return True
    listed = str(entry.get("litellm_provider", ""))
    return listed == provider or listed == model.split("/", 1)[0]


def _dec(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def _model_price(entry: Mapping[str, Any]) -> ModelPrice:
    max_out = entry.get("max_output_tokens") or entry.get("max_tokens")
    return ModelPrice(
        input=_dec(entry.get("input_cost_per_token")),
        output=_dec(entry.get("output_cost_per_token")),
        cache_read=_dec(entry.get("cache_read_input_token_cost")),
        cache_write=_dec(entry.get("cache_creation_input_token_cost")),
        reasoning=_dec(entry.get("output_cost_per_reasoning_token")),
        max_output_tokens=max_out if isinstance(max_out, int) and max_out > 0 else None,
    )


def _map_entry(price_map: Mapping[str, Any], name: str) -> ModelPrice | None:
    head, sep, rest = name.partition("/")
    for candidate in (name, rest) if sep else (name,):
        entry = price_map.get(candidate)
        if _priced(entry):
            return _model_price(entry)
    return None


def _parse_override(
    name: str, fields: Mapping[str, str | float], base: ModelPrice | None
) -> ModelPrice:
    """One override, merged over the map's entry for the model (if any)."""
    unknown = sorted(set(fields) - OVERRIDE_KEYS)
    if unknown:
        allowed = ", ".join(sorted(OVERRIDE_KEYS))
        raise ValueError(
            f"price override {name!r}: unknown field {unknown[0]!r} (allowed: {allowed})"
        )
    values: dict[str, Any] = {}
    if base is not None:
        values = {
            "input": base.input,
            "output": base.output,
            "cache_read": base.cache_read,
            "cache_write": base.cache_write,
            "reasoning": base.reasoning,
            "max_output_tokens": base.max_output_tokens,
        }
    for key, raw in fields.items():
        if key == "max_output_tokens":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
                raise ValueError(
                    f"price override {name!r}: max_output_tokens must be a positive integer"
                )
            values["max_output_tokens"] = raw
            continue
        field, _, unit = key.rpartition("_per_")
        amount = _dec(raw)
        if amount is None or isinstance(raw, bool):
            raise ValueError(
                f"price override {name!r}: {key} must be a non-negative decimal, got {raw!r}"
            )
        values[_OVERRIDE_FIELDS[field]] = amount / _MILLION if unit == "million" else amount
    if values.get("input") is None or values.get("output") is None:
        raise ValueError(
            f"price override {name!r}: the price map does not know this model, so the "
            "override needs both input_per_token and output_per_token (or *_per_million)"
        )
    return ModelPrice(**values)
