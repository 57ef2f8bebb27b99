"""The pricer's batch event, ``cost.calls.priced``, on the in-memory store: a pull's calls
priced into one event (its columns, the prices once per model), its id the same for the
same calls, a call no cost event can hold left out and terminated, a failed append
retried later, and the spend projection's columns from old and new events alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from chiffon.cost.pricing import (
    Call,
    Pricer,
    RunOrigin,
    batch_event,
    batch_event_id,
    calls_priced,
    priced_call,
    read_work,
)
from chiffon.cost.projections import columns_of
from chiffon.events import CATALOG, Actor, Envelope, new_event
from chiffon.events.costs import (
    CALL_COLUMNS,
    MAX_PRICED_CALLS,
    CallPriced,
    CallsPriced,
    PriceUnknown,
)
from chiffon.events.runs import LlmCalled, RunRequested
from chiffon.eventstore import (
    AggregateKey,
    AppendResult,
    EventStoreError,
    InMemoryEventStore,
    RecordedEvent,
)
from chiffon.spend.prices import PriceBook

KEY = Actor(kind="api_key", id="key-1", name="ci")
EXECUTOR = Actor.service("executor", 1)
COST = Actor.service("cost", 2)
BOOK = PriceBook.load()


def requested(run_id: str) -> Envelope[Any]:
    payload = RunRequested(workflow="triage", version=1, digest="sha256:x")
    return new_event(payload, aggregate_id=run_id, actor=KEY)


def called(run_id: str, model: str = "openai/gpt-4o-mini", **fields: Any) -> Envelope[Any]:
    payload = LlmCalled.model_validate(
        {
            "node_id": "summarise",
            "attempt": 1,
            "provider": model.split("/", 1)[0],
            "model": model,
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "latency_ms": 1.0,
        }
        | fields
    )
    return new_event(payload, aggregate_id=run_id, actor=EXECUTOR)


class Item:
    """A delivered work item that records how it was settled."""

    def __init__(
        self,
        sequence: int,
        event: Envelope[Any] | bytes,
        subject: str = "chiffon.run.x.run.llm.called",
    ) -> None:
        self.sequence = sequence
        self.delivered = 1
        if isinstance(event, bytes):
            self.data, self.subject = event, subject
        else:
            self.data = event.model_dump_json().encode()
            self.subject = f"chiffon.run.{event.aggregate_id}.{event.type}"
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")

    async def in_progress(self) -> None:
        pass


def call_of(event: Envelope[Any]) -> Call:
    kind, call = read_work(event.model_dump_json().encode())
    assert isinstance(call, Call)
    return call


async def priced_events(store: InMemoryEventStore) -> list[RecordedEvent]:
    return [e async for e in store.read_stream("COSTS")]


def test_a_batch_holds_each_call_and_its_models_prices_once() -> None:
    calls = [
        call_of(called("run-1", prompt_tokens=1000, cached_read_tokens=600)),
        call_of(called("run-2", "anthropic/claude-haiku-4-5-20251001")),
        call_of(called("run-1", "openai/no-such-model-x1")),
        call_of(called("run-2")),
    ]
    rows, prices = [], {}
    for call in calls:
        row, model_prices = priced_call(BOOK, call, RunOrigin("triage", "key-1"))
        rows.append(row)
        prices[call.payload.provider, call.payload.model] = model_prices
    payload, bad = calls_priced(rows, prices, BOOK.version)
    assert bad == {} and payload is not None
    assert len(payload) == 4
    assert payload.llm_event_id == [c.event_id for c in calls]
    assert payload.cost_usd[0] == Decimal("0.000111")  # 400 input, 600 cached, 10 output
    assert payload.cost_usd[2] is None and payload.source[2] == "unknown"
    assert [(m.provider, m.model) for m in payload.models] == [  # one entry per model
        ("anthropic", "anthropic/claude-haiku-4-5-20251001"),
        ("openai", "openai/gpt-4o-mini"),
        ("openai", "openai/no-such-model-x1"),
    ]
    assert payload.prices_of("openai", "openai/gpt-4o-mini").cache_read == Decimal("0.000000075")
    assert payload.prices_of("openai", "openai/no-such-model-x1").input is None
    assert payload.price_map_version == BOOK.version
    # Stored and read back: the same calls, to the last digit.
    event = batch_event(payload, COST)
    decoded = CATALOG.decode(event.model_dump_json())
    assert decoded.payload == payload
    [first, *_] = decoded.payload.calls()
    assert (first.llm_event_id, first.run_id, first.workflow, first.key_id) == (
        calls[0].event_id,
        "run-1",
        "triage",
        "key-1",
    )
    assert (first.cost_usd, first.called_at) == (Decimal("0.000111"), calls[0].occurred_at)


def test_the_batch_id_is_the_same_for_the_same_calls_and_names_its_replica() -> None:
    assert batch_event_id(["a", "b", "c"]) == batch_event_id(["c", "a", "b"])
    assert batch_event_id(["a", "b"]) != batch_event_id(["a", "b", "c"])
    rows = [priced_call(BOOK, call_of(called("run-1")), RunOrigin(None, None))[0]]
    payload, _ = calls_priced(rows, {("openai", "openai/gpt-4o-mini"): _prices()}, "v")
    assert payload is not None
    event = batch_event(payload, COST)
    assert event.event_id == batch_event(payload, COST).event_id
    assert (event.aggregate, event.aggregate_id) == ("cost", "pricer-cost-2")


def _prices() -> Any:
    return priced_call(BOOK, call_of(called("run-1")), RunOrigin(None, None))[1]


def test_a_call_no_cost_event_can_hold_is_left_out_with_its_reason() -> None:
    good = priced_call(BOOK, call_of(called("run-1")), RunOrigin(None, None))[0]
    long_model = "openai/" + "x" * 300  # run.llm.called does not bound a model's name
    bad = priced_call(BOOK, call_of(called("run-1", long_model)), RunOrigin(None, None))[0]
    prices = {("openai", "openai/gpt-4o-mini"): _prices(), ("openai", long_model): _prices()}
    payload, refused = calls_priced([good, bad, good], prices, BOOK.version)
    assert list(refused) == [1]
    assert refused[1].startswith("model: String should have at most 200 characters")
    assert payload is not None and len(payload) == 2
    payload, refused = calls_priced([bad], prices, BOOK.version)
    assert payload is None and list(refused) == [0]


def test_columns_must_hold_one_value_per_call_and_at_most_the_maximum() -> None:
    row = priced_call(BOOK, call_of(called("run-1")), RunOrigin(None, None))[0]
    document: dict[str, Any] = {name: [value] for name, value in zip(CALL_COLUMNS, row)}
    document |= {"models": [], "price_map_version": "v"}
    CallsPriced.model_validate(document)
    with pytest.raises(ValidationError, match="every column holds one value per call"):
        CallsPriced.model_validate(document | {"run_id": ["run-1", "run-2"]})
    with pytest.raises(ValidationError, match="at least one call"):
        CallsPriced.model_validate(document | {name: [] for name in CALL_COLUMNS})
    too_many = {name: [value] * (MAX_PRICED_CALLS + 1) for name, value in zip(CALL_COLUMNS, row)}
    with pytest.raises(ValidationError, match=f"at most {MAX_PRICED_CALLS} items"):
        CallsPriced.model_validate(document | too_many)


async def test_a_pull_is_priced_into_batches_warnings_and_settled_items() -> None:
    store = InMemoryEventStore(CATALOG)
    await store.append(AggregateKey("run", "run-old"), [requested("run-old")])  # read back
    calls = [called("run-new" if n % 2 else "run-old") for n in range(MAX_PRICED_CALLS + 3)]
    unknown = called("run-new", "openai/no-such-model-x1")
    unpriceable = called("run-new", "openai/" + "y" * 300)
    items = [Item(1, requested("run-new"))]
    items += [Item(n + 2, e) for n, e in enumerate([*calls, unknown, unpriceable])]
    poison = Item(10_000, b"not json")
    pricer = Pricer(store, BOOK, COST)

    await pricer.price(list(reversed([*items, poison])))  # settled in stream order

    assert [item.settled for item in items] == [["ack"]] * (len(items) - 1) + [["term"]]
    assert poison.settled == ["term"]
    assert pricer.priced == len(calls) + 1
    recorded = await priced_events(store)
    batches = [e.payload for e in recorded if isinstance(e.payload, CallsPriced)]
    assert [len(b) for b in batches] == [MAX_PRICED_CALLS, 4]
    priced = [call for batch in batches for call in batch.calls()]
    assert [c.llm_event_id for c in priced] == [str(e.event_id) for e in [*calls, unknown]]
    assert {(c.run_id, c.workflow, c.key_id) for c in priced} == {
        ("run-old", "triage", "key-1"),
        ("run-new", "triage", "key-1"),
    }
    [warning] = [e for e in recorded if isinstance(e.payload, PriceUnknown)]
    assert warning.envelope.aggregate_id == "run-new"  # the run's own cost aggregate
    assert warning.payload.llm_event_id == str(unknown.event_id)

    # The same pull delivered again (a crash before its acks): the same events, stored once.
    again = [Item(item.sequence, item.data, item.subject) for item in items]
    await pricer.price(again)
    assert len(await priced_events(store)) == len(recorded)


def test_a_call_reads_the_same_by_its_subject_by_its_type_and_from_an_old_schema() -> None:
    event = called("run-1", prompt_tokens=1000, cached_read_tokens=600, reasoning_tokens=0)
    data = event.model_dump_json().encode()
    by_subject = read_work(data, f"chiffon.run.run-1.{event.type}")
    assert by_subject == read_work(data) == ("run.llm.called", call_of(event))
    [call] = [by_subject[1]]
    assert isinstance(call, Call)
    assert (call.event_id, call.run_id, call.occurred_at) == (
        str(event.event_id),
        "run-1",
        event.occurred_at,
    )
    assert (call.payload.prompt_tokens, call.payload.cached_read_tokens) == (1000, 600)
    old = orjson.loads(data)
    old["schema_version"] = 1
    for field in ("cached_read_tokens", "cache_write_tokens", "reasoning_tokens", "budget_note"):
        old["payload"].pop(field)
    old["payload"].pop("budget_holds")
    _, upcast = read_work(orjson.dumps(old), f"chiffon.run.run-1.{event.type}")
    assert isinstance(upcast, Call) and upcast.payload.cached_read_tokens == 0


async def test_a_call_whose_fields_are_not_what_its_schema_says_is_terminated_alone() -> None:
    store = InMemoryEventStore(CATALOG)
    good = called("run-1")
    bad = orjson.loads(called("run-1").model_dump_json())
    bad["payload"]["prompt_tokens"] = "many"
    items = [Item(1, requested("run-1")), Item(2, good), Item(3, orjson.dumps(bad))]
    pricer = Pricer(store, BOOK, COST)
    await pricer.price(items)
    assert [item.settled for item in items] == [["ack"], ["ack"], ["term"]]
    assert pricer.priced == 1


class RefusingStore(InMemoryEventStore):
    async def append_many(self, batch: Any) -> list[AppendResult | EventStoreError]:
        return [EventStoreError("NATS is away")] * len(batch)


async def test_calls_whose_batch_was_not_stored_come_again() -> None:
    store = RefusingStore(CATALOG)
    items = [Item(1, requested("run-1")), Item(2, called("run-1")), Item(3, called("run-1"))]
    pricer = Pricer(store, BOOK, COST)
    await pricer.price(items)
    assert [item.settled for item in items] == [["ack"], ["nak"], ["nak"]]
    assert pricer.priced == 0


def test_the_projection_reads_old_and_new_events_as_the_same_columns() -> None:
    new = called("run-1", prompt_tokens=1000, cached_read_tokens=600)
    row, prices = priced_call(BOOK, call_of(new), RunOrigin("triage", "key-1"))
    payload, _ = calls_priced([row], {("openai", "openai/gpt-4o-mini"): prices}, BOOK.version)
    assert payload is not None
    [item] = payload.calls()
    old = CallPriced.model_validate(
        item.model_dump() | {"llm_event_id": "old-1", "price_map_version": BOOK.version}
    )
    events = [
        RecordedEvent(batch_event(payload, COST), "COSTS", 1, "s"),
        RecordedEvent(new_event(old, aggregate_id="run-1", actor=COST), "COSTS", 2, "s"),
    ]
    columns = columns_of(events)
    assert "attempt" not in columns  # cost_calls has no such column
    assert columns["llm_event_id"] == [str(new.event_id), "old-1"]
    # The cost as its digits and the time in whole microseconds since the epoch, for
    # PostgreSQL to make a numeric and a timestamptz again: exact.
    assert columns["cost_usd"] == [str(item.cost_usd)] * 2  # its digits as priced
    assert [Decimal(cost) for cost in columns["cost_usd"]] == [Decimal("0.000111")] * 2
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert columns["called_at"] == [(new.occurred_at - epoch) // timedelta(microseconds=1)] * 2
