"""The cost service as a process over real NATS and PostgreSQL: every ``run.llm.called``
priced into ``cost.calls.priced`` and the spend read models, exactly once across a kill -9,
and a rebuild of the read models that agrees to the cent."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.cost.projections import SpendProjection
from chiffon.cost.readmodel import cost_calls, cost_runs
from chiffon.devstack.ports import free_port
from chiffon.events import Actor, Envelope, new_event
from chiffon.events.costs import CallsPriced, PricedCallItem, PriceUnknown
from chiffon.events.runs import LlmCalled, RunRequested
from chiffon.eventstore import ANY, AggregateKey, JetStreamEventStore
from chiffon.projections.plugins import projection_named
from chiffon.projections.runner import ProjectionRunner
from chiffon.spend.prices import PriceBook
from tests.integration.gateway.support import Service, start_service, stop_all, wait_ready
from tests.support.fixtures import eventually

API_KEY = Actor(kind="api_key", id="key-7f3a", name="ci")
EXECUTOR = Actor.service("executor", 1)


def start_cost(env: dict[str, str], log_dir: Path, **extra: str) -> Service:
    return start_service(
        "chiffon.cost",
        "cost-1",
        {**env, "CHIFFON_REPLICA": "1", "CHIFFON_LOG_LEVEL": "warning", **extra},
        log_dir,
        free_port(),
    )


@pytest.fixture
async def cost(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Service]:
    service = start_cost(service_env, tmp_path)
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


def requested(run_id: str, workflow: str = "triage") -> Envelope[Any]:
    payload = RunRequested(workflow=workflow, version=1, digest="sha256:x")
    return new_event(payload, aggregate_id=run_id, actor=API_KEY)


def called(run_id: str, model: str, node: str = "summarise", **tokens: int) -> Envelope[Any]:
    provider = model.split("/", 1)[0]
    payload = LlmCalled.model_validate(
        {"node_id": node, "attempt": 1, "provider": provider, "model": model, "latency_ms": 12.5}
        | tokens
    )
    return new_event(payload, aggregate_id=run_id, actor=EXECUTOR)


async def append(store: JetStreamEventStore, events: list[Envelope[Any]]) -> None:
    results = await store.append_many(
        [(AggregateKey("run", e.aggregate_id), e, ANY) for e in events]
    )
    assert all(not isinstance(r, Exception) for r in results), results


async def cost_events(store: JetStreamEventStore) -> list[Any]:
    """The COSTS stream's priced calls (each batch's items, in order) and warnings."""
    found: list[Any] = []
    async for e in store.read_stream("COSTS"):
        if isinstance(e.payload, CallsPriced):
            assert e.envelope.aggregate_id == "pricer-cost-1"  # the replica's batches
            found.extend(e.payload.calls())
        elif isinstance(e.payload, PriceUnknown):
            found.append(e.payload)
    return found


async def count_calls(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(cost_calls))).scalar_one())


async def test_calls_are_priced_exactly_into_the_spend_read_models(
    store: JetStreamEventStore, engine: AsyncEngine, cost: Service
) -> None:
    mini = called(
        "run-a",
        "openai/gpt-4o-mini",
        prompt_tokens=1000,
        completion_tokens=10,
        cached_read_tokens=600,
    )
    qwen = called(
        "run-a",
        "dashscope/qwen-turbo",
        node="think",
        prompt_tokens=10,
        completion_tokens=50,
        reasoning_tokens=40,
    )
    local = called("run-a", "ollama_chat/llama3.1", prompt_tokens=5000, completion_tokens=900)
    mystery = called("run-a", "openai/no-such-model-x1", prompt_tokens=3, completion_tokens=4)
    await append(store, [requested("run-a"), mini, qwen, local, mystery])

    await eventually(lambda: _is(engine, 4), timeout=30, message="4 calls priced")
    async with engine.connect() as conn:
        rows = {r.llm_event_id: r for r in (await conn.execute(select(cost_calls))).all()}
        run = (await conn.execute(select(cost_runs))).one()
    assert set(rows) == {str(e.event_id) for e in (mini, qwen, local, mystery)}
    # The map's prices, exactly: 400 input + 600 cached + 10 output tokens of gpt-4o-mini.
    row = rows[str(mini.event_id)]
    assert (row.cost_usd, row.source) == (Decimal("0.000111"), "price_map")
    assert (row.prompt_tokens, row.cached_read_tokens, row.completion_tokens) == (1000, 600, 10)
    assert (row.workflow, row.key_id, row.run_id, row.node_id) == (
        "triage",
        "key-7f3a",
        "run-a",
        "summarise",
    )
    assert row.day == mini.occurred_at.date()
    assert row.month == mini.occurred_at.strftime("%Y-%m")
    # Reasoning tokens at the map's reasoning price.
    assert rows[str(qwen.event_id)].cost_usd == Decimal("0.0000225")
    assert (rows[str(local.event_id)].cost_usd, rows[str(local.event_id)].source) == (
        Decimal(0),
        "local",
    )
    # Unknown: NULL, never 0.
    assert (rows[str(mystery.event_id)].cost_usd, rows[str(mystery.event_id)].source) == (
        None,
        "unknown",
    )
    assert (run.run_id, run.cost_usd, run.calls, run.unknown_calls) == (
        "run-a",
        Decimal("0.0001335"),
        4,
        1,
    )
    assert (run.workflow, run.key_id) == ("triage", "key-7f3a")

    events = await cost_events(store)
    unknown = [e for e in events if isinstance(e, PriceUnknown)]
    assert [(u.llm_event_id, u.model) for u in unknown] == [
        (str(mystery.event_id), "openai/no-such-model-x1")
    ]
    priced = {e.llm_event_id: e for e in events if isinstance(e, PricedCallItem)}
    assert len(priced) == len([e for e in events if isinstance(e, PricedCallItem)]) == 4
    [batch] = [e async for e in store.read_stream("COSTS") if isinstance(e.payload, CallsPriced)]
    assert batch.payload.price_map_version == PriceBook.load().version
    mini_prices = batch.payload.prices_of("openai", "openai/gpt-4o-mini")
    assert (mini_prices.input, mini_prices.cache_read) == (
        Decimal("0.00000015"),
        Decimal("0.000000075"),
    )
    assert batch.payload.prices_of("openai", "openai/no-such-model-x1").input is None


async def _is(engine: AsyncEngine, n: int) -> bool:
    return await count_calls(engine) == n


async def test_a_killed_cost_service_prices_every_call_once_and_a_rebuild_agrees(
    store: JetStreamEventStore, engine: AsyncEngine, service_env: dict[str, str], tmp_path: Path
) -> None:
    runs = [f"run-{i}" for i in range(40)]
    models = ["openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-haiku-4-5-20251001"]
    events: list[Envelope[Any]] = [requested(r, workflow=f"wf{i % 3}") for i, r in enumerate(runs)]
    for n in range(2000):
        events.append(
            called(
                runs[n % len(runs)],
                models[n % len(models)],
                prompt_tokens=100 + n,
                completion_tokens=7 + n % 13,
                cached_read_tokens=n % 50,
                cache_write_tokens=n % 3,
            )
        )
    for start in range(0, len(events), 1000):
        await append(store, events[start : start + 1000])
    book = PriceBook.load()
    expected: dict[str, Decimal] = {}
    for event in events:
        if isinstance(event.payload, LlmCalled):
            p = event.payload
            price = book.price_call(
                p.provider,
                p.model,
                prompt_tokens=p.prompt_tokens,
                completion_tokens=p.completion_tokens,
                cached_read_tokens=p.cached_read_tokens,
                cache_write_tokens=p.cache_write_tokens,
            ).cost_usd
            assert price is not None
            expected[event.aggregate_id] = expected.get(event.aggregate_id, Decimal(0)) + price

    # Small pulls (100 of them for the 2,000 calls), and the kill as soon as the first
    # batch is in the stream: most calls are then still unpriced, some pulled and not
    # acknowledged.
    fast_redelivery = {"CHIFFON_PRICER_ACK_WAIT_SECONDS": "2", "CHIFFON_PRICER_BATCH": "20"}
    first = start_cost(service_env, tmp_path, **fast_redelivery)

    async def pricing() -> bool:
        return await store.last_sequence("COSTS") > 0

    try:
        await eventually(pricing, timeout=90, interval=0.005)
    finally:
        os.killpg(first.process.pid, signal.SIGKILL)  # mid-stream: no shutdown code runs
        first.process.wait(10)
    priced_before = [e for e in await cost_events(store) if isinstance(e, PricedCallItem)]
    assert 0 < len(priced_before) < 2000, "killed too late to prove anything"

    second = start_cost(service_env, tmp_path, **fast_redelivery)
    try:
        await wait_ready(second)
        await eventually(lambda: _is(engine, 2000), timeout=60, message="all 2000 calls priced")
    finally:
        stop_all([second])

    # Every call in the stream, at one price: a call whose pull was cut short by the kill
    # may be in two batches (priced again after the ack wait), never at two prices.
    priced = [e for e in await cost_events(store) if isinstance(e, PricedCallItem)]
    seen: dict[str, PricedCallItem] = {}
    for item in priced:
        assert seen.setdefault(item.llm_event_id, item).cost_usd == item.cost_usd
    assert set(seen) == {str(e.event_id) for e in events if isinstance(e.payload, LlmCalled)}
    # ... and counted once: a row per call, each run's total the sum of its calls.
    totals = await run_totals(engine)
    assert totals == {run: (expected[run], 2000 // len(runs)) for run in runs}

    # The rebuild (as `chiffon projections rebuild cost.spend` runs it) agrees to the cent.
    assert projection_named("cost.spend") is SpendProjection
    await ProjectionRunner(store, engine, SpendProjection()).rebuild(workers=1)
    assert await run_totals(engine) == totals
    assert await count_calls(engine) == 2000


async def run_totals(engine: AsyncEngine) -> dict[str, tuple[Decimal, int]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(cost_runs))).all()
        calls = {
            r.run_id: r.total
            for r in (
                await conn.execute(
                    select(
                        cost_calls.c.run_id, func.sum(cost_calls.c.cost_usd).label("total")
                    ).group_by(cost_calls.c.run_id)
                )
            ).all()
        }
    assert {r.run_id: r.cost_usd for r in rows} == calls  # runs agree with their calls
    return {r.run_id: (r.cost_usd, r.calls) for r in rows}


async def test_a_call_in_two_batches_and_an_old_event_is_counted_once(
    store: JetStreamEventStore, engine: AsyncEngine
) -> None:
    # A call priced again after a crash is in another batch (the pulls are cut
    # differently); streams from before the batches hold cost.call.priced per call.
    from chiffon.cost.pricing import RunOrigin, batch_event, calls_priced, priced_call, read_work
    from chiffon.events.costs import CallPriced

    book = PriceBook.load()
    cost_1, cost_2 = Actor.service("cost", 1), Actor.service("cost", 2)
    llm = [called("run-d", "openai/gpt-4o-mini", prompt_tokens=100 * (n + 1)) for n in range(4)]
    rows, prices = [], {}
    for event in llm:
        _, call = read_work(event.model_dump_json().encode())
        assert call is not None and not isinstance(call, RunOrigin)
        row, prices["openai", "openai/gpt-4o-mini"] = priced_call(book, call, RunOrigin("wf", "k"))
        rows.append(row)
    first, _ = calls_priced(rows[:3], prices, book.version)
    again, _ = calls_priced(rows[2:], prices, book.version)  # the third call once more
    assert first is not None and again is not None
    [third] = [c for c in first.calls() if c.llm_event_id == str(llm[2].event_id)]
    old = CallPriced.model_validate(third.model_dump() | {"price_map_version": book.version})
    batches = [batch_event(first, cost_1), batch_event(again, cost_2)]
    for event in batches:
        await store.append(AggregateKey("cost", event.aggregate_id), [event])
    await store.append(
        AggregateKey("cost", "run-d"), [new_event(old, aggregate_id="run-d", actor=cost_1)]
    )

    runner = ProjectionRunner(store, engine, SpendProjection())
    await runner.catch_up()  # the three events in one batch: one COPY, one statement
    costs = [c.cost_usd for c in [*first.calls(), *again.calls()[1:]]]
    expected = sum((cost for cost in costs if cost is not None), Decimal(0))
    assert len(costs) == 4 and expected > 0
    assert await count_calls(engine) == 4
    assert await run_totals(engine) == {"run-d": (expected, 4)}
    async with engine.connect() as conn:
        days = (await conn.execute(select(cost_calls.c.day, cost_calls.c.month))).all()
    at = llm[0].occurred_at  # UTC
    assert set(days) == {(at.date(), at.strftime("%Y-%m"))}
    await runner.rebuild(workers=1)
    assert await run_totals(engine) == {"run-d": (expected, 4)}


def test_a_bad_price_override_stops_the_cost_service_with_the_reason() -> None:
    # One process start (~7 s here); the settings' own refusals are unit tests.
    import subprocess
    import sys

    env = {**os.environ, "CHIFFON_PRICE_OVERRIDES": '{"openai/my-model": {"input_per_token": "1"}}'}
    done = subprocess.run(
        [sys.executable, "-m", "chiffon.cost"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        "chiffon cost: invalid settings: price override 'openai/my-model'"
    )
    assert "needs both input_per_token and output_per_token" in done.stderr


def test_an_old_run_llm_called_without_cache_counts_is_read_and_priced() -> None:
    # Schema version 1 (before issue 18) had no cached or reasoning counts: upcast to 0.
    from chiffon.cost.pricing import (
        Call,
        RunOrigin,
        batch_event,
        calls_priced,
        priced_call,
        read_work,
    )

    current = called("run-old", "openai/gpt-4o-mini", prompt_tokens=100, completion_tokens=10)
    stored = json.loads(current.model_dump_json())
    stored["schema_version"] = 1
    for field in ("cached_read_tokens", "cache_write_tokens", "reasoning_tokens", "budget_note"):
        stored["payload"].pop(field)
    stored["payload"].pop("budget_holds", None)
    kind, call = read_work(json.dumps(stored).encode())
    assert kind == "run.llm.called" and isinstance(call, Call)
    assert (call.event_id, call.run_id, call.occurred_at) == (
        str(current.event_id),
        "run-old",
        current.occurred_at,
    )
    book = PriceBook.load()
    row, prices = priced_call(book, call, RunOrigin("wf", None))
    payload, bad = calls_priced([row], {("openai", "openai/gpt-4o-mini"): prices}, book.version)
    assert bad == {} and payload is not None
    [item] = payload.calls()
    assert item.cost_usd == 100 * Decimal("0.00000015") + 10 * Decimal("0.0000006")
    assert item.cached_read_tokens == 0
    # The same call priced again is the same event id: JetStream stores it once.
    event = batch_event(payload, Actor.service("cost"))
    assert batch_event(payload, Actor.service("cost")).event_id == event.event_id


async def test_a_cost_in_exponent_form_and_a_time_with_an_offset_are_stored_exactly(
    store: JetStreamEventStore, engine: AsyncEngine
) -> None:
    # The projection sends called_at and cost_usd to PostgreSQL as text: a cost Python
    # writes as 1.5E-7 and a call made at 00:30 in +02:00 (the day before, in UTC) must
    # come out as the same decimal, the same instant and the UTC day.
    from datetime import datetime, timedelta, timezone

    from chiffon.cost.pricing import RunOrigin, batch_event, calls_priced, priced_call, read_work

    book = PriceBook.load()
    event = called("run-x", "openai/gpt-4o-mini", prompt_tokens=1)
    at = datetime(2026, 3, 1, 0, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    event = event.model_copy(update={"occurred_at": at})
    _, call = read_work(event.model_dump_json().encode())
    assert call is not None and not isinstance(call, RunOrigin)
    row, prices = priced_call(book, call, RunOrigin("wf", "k"))
    payload, _ = calls_priced([row], {("openai", "openai/gpt-4o-mini"): prices}, book.version)
    assert payload is not None
    [item] = payload.calls()
    assert str(item.cost_usd) == "1.5E-7"
    batch = batch_event(payload, Actor.service("cost", 1))
    await store.append(AggregateKey("cost", batch.aggregate_id), [batch])

    await ProjectionRunner(store, engine, SpendProjection()).catch_up()
    async with engine.connect() as conn:
        stored = (
            await conn.execute(
                select(cost_calls.c.cost_usd, cost_calls.c.called_at, cost_calls.c.day)
            )
        ).one()
    assert stored == (Decimal("0.00000015"), at, datetime(2026, 2, 28).date())
    assert await run_totals(engine) == {"run-x": (Decimal("0.00000015"), 1)}
