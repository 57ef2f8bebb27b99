"""Hard budgets enforced before the call, with two real executor replicas, a real gateway
and the OpenAI-compatible test server reporting usage: 20 concurrent runs against a
global budget that fits 5 calls never spend more than it; the runs with a free fallback
take it (saying why), the others pause and resume to success when the budget is raised.
A replica killed mid-call leaves a reservation that expires: the budget is not leaked. A
replica killed while holding a lease leaves the calls it paid for counted: the cost
service settles the lease from them once it expires."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from chiffon.devstack.ports import free_port
from chiffon.events import Actor, new_event
from chiffon.events.costs import BudgetSet, BudgetSettled
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.spend.budgets import BudgetState
from chiffon.spend.prices import PriceBook, count_prompt_tokens
from tests.integration.gateway.support import (
    ADMIN_KEY,
    Service,
    start_service,
    stop_all,
    wait_ready,
)
from tests.support.fixtures import eventually

from .conftest import Spawn, llm_env
from .helpers import events_until, of_type
from .openai_server import FakeOpenAI

PRICED = "openai/chiffon-priced"
OVERRIDES = {PRICED: {"input_per_token": "0.0001", "output_per_token": "0.0002"}}
PROMPT = "summarise the budget"
MAX_TOKENS = 10
ADMIN = Actor(kind="user", id="admin")


def workflow(name: str, fallback: bool, timeout: str = "5s") -> str:
    fallbacks = "[chiffon/echo]" if fallback else "[]"
    return f"""
name: {name}
version: 1
nodes:
  - id: draft
    type: llm
    model: {PRICED}
    fallbacks: {fallbacks}
    prompt: "{PROMPT}"
    max_tokens: {MAX_TOKENS}
    timeout: {timeout}
"""


def worst_case() -> Decimal:
    tokens = count_prompt_tokens([{"role": "user", "content": PROMPT}])
    worst = PriceBook.load(OVERRIDES).worst_case(
        "openai", PRICED, prompt_tokens=tokens, max_output_tokens=MAX_TOKENS
    )
    assert worst is not None
    return worst


async def set_global(store: JetStreamEventStore, hard: Decimal) -> None:
    payload = BudgetSet(scope="global", scope_id="global", period="day", hard_usd=hard)
    event = new_event(payload, aggregate_id="global", actor=ADMIN)
    await store.append(AggregateKey("budget", "global"), [event])


async def ledger(store: JetStreamEventStore) -> tuple[BudgetState, list[Any]]:
    state = await BudgetDirectory(store).catch_up("global")
    events, _ = await store.read_aggregate(AggregateKey("budget", "global"))
    return state, [e.payload for e in events]


def settled(payloads: list[Any]) -> Decimal:
    return sum(
        (s.actual_usd for p in payloads if p.event_type == "budget.settled" for s in p.settlements),
        Decimal(0),
    )


async def test_a_hard_budget_holds_across_two_replicas_and_a_killed_one_leaks_nothing(
    store: JetStreamEventStore,
    spawn_executor: Spawn,
    client: Any,
    openai_server: FakeOpenAI,
    cost_service: Service,
) -> None:
    worst = worst_case()
    # Every call reports exactly its worst case: the budget fits 5 calls, no more.
    tokens = count_prompt_tokens([{"role": "user", "content": PROMPT}])
    openai_server.usage = {"prompt_tokens": tokens, "completion_tokens": MAX_TOKENS}
    hard = worst * 5
    await set_global(store, hard)
    env = {
        **llm_env(openai_server),
        "CHIFFON_PRICE_OVERRIDES": json.dumps(OVERRIDES),
        "CHIFFON_BUDGET_RESERVATION_GRACE_SECONDS": "1",
        "CHIFFON_BUDGET_RESUME_SWEEP_SECONDS": "0.5",
        "CHIFFON_PROJECTIONS": "off",
    }
    replicas = await asyncio.gather(*(spawn_executor(k, env) for k in (1, 2)))
    tag = uuid.uuid4().hex[:6]
    free, strict = f"free-{tag}", f"strict-{tag}"
    await client.register_workflow(workflow(free, fallback=True))
    await client.register_workflow(workflow(strict, fallback=False))

    started = await asyncio.gather(
        *(client.start_run(free if n % 2 else strict, inputs={}) for n in range(20))
    )
    runs = {s["run_id"]: s["workflow"] for s in started}
    settled_or_paused = {"run.completed", "run.paused", "run.failed"}
    seen = await asyncio.gather(
        *(events_until(client, r, lambda e: e.type in settled_or_paused) for r in runs)
    )

    ends = {r: events[-1] for r, events in zip(runs, seen, strict=True)}
    assert {e.type for e in ends.values()} <= {"run.completed", "run.paused"}
    assert len(openai_server.requests) == 5  # five calls went out, no more
    # The recorded spend (settled as the calls ended, the runs not waiting for it):
    # exactly the budget, never above.
    state = await spent_at_least(store, hard)
    assert state.spent(datetime.now(UTC)) == hard
    for run_id, events in zip(runs, seen, strict=True):
        call = of_type(events, "run.llm.called")[-1] if ends[run_id].type != "run.paused" else {}
        if runs[run_id] == free:
            assert ends[run_id].type == "run.completed"
            if call["model"] != PRICED:
                assert call["fallback_index"] == 1
                assert "budget global" in call["budget_note"]
        elif ends[run_id].type == "run.paused":
            paused = ends[run_id].payload
            assert (paused["reason"], paused["budget"]) == ("budget", "global")
            assert Decimal(str(paused["needed_usd"])) == worst
    paused_runs = [r for r, e in ends.items() if e.type == "run.paused"]
    assert paused_runs  # 10 strict runs, at most 5 priced calls

    await set_global(store, Decimal("1"))  # raised: the paused runs resume

    resumed = await asyncio.gather(*(events_until(client, r) for r in paused_runs))
    assert all(events[-1].type == "run.completed" for events in resumed)
    await spent_at_least(store, hard + worst * len(paused_runs))

    # A replica killed mid-call: its reservation expires (5 s timeout + 1 s grace; a lease
    # it drew the call from, at twice that), the survivor takes the run over and settles
    # its own call.
    openai_server.delay = 30
    run_id = (await client.start_run(strict, inputs={}))["run_id"]
    await eventually(lambda: _true(openai_server.in_flight == 1), timeout=15)
    stored, _ = await store.read_aggregate(AggregateKey("run", run_id))
    holder = [e.payload.executor for e in stored if e.type == "run.claimed"][-1]
    next(r for r in replicas if r.name == holder).kill()
    openai_server.delay = 0

    assert (await events_until(client, run_id))[-1].type == "run.completed"

    def expiries(payloads: list[Any]) -> set[str]:
        return {
            i
            for p in payloads
            if p.event_type == "budget.reservation_expired"
            for i in p.reservation_ids
        }

    async def released() -> bool:
        # A call's own reservation stops counting at its expiry; the cost service's
        # record of it comes at its next sweep: both are what a user sees.
        state, payloads = await ledger(store)
        return state.reserved(datetime.now(UTC)) == 0 and bool(expiries(payloads))

    await eventually(
        released, timeout=25, message="the killed call's reservation expired and recorded"
    )
    state, payloads = await ledger(store)
    now = datetime.now(UTC)
    # What the killed call held: its own reservation, or the lease its replica drew it
    # from (taken while the resumed runs went); its replica never settled it, so the
    # cost service recorded its expiry (and settled a lease from its calls).
    expired = expiries(payloads)
    assert all(i == f"{run_id}:draft:1:0" or i.startswith(f"lease:{holder}:") for i in expired)
    assert state.remaining(now) == Decimal("1") - state.spent(now)


async def spent_at_least(store: JetStreamEventStore, amount: Decimal) -> BudgetState:
    """The ledger once its settlements add up to ``amount`` (never more: checked)."""

    async def probe() -> bool:
        _, payloads = await ledger(store)
        total = settled(payloads)
        assert total <= amount, f"spent {total}, above {amount}"
        return total == amount

    await eventually(probe, timeout=10, message=f"settlements adding up to {amount}")
    state, _ = await ledger(store)
    return state


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
async def cost_service(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Service]:
    """The cost service (it answers the budget listing, and settles expired leases),
    pricing the test model as the executor does."""
    env = {
        **service_env,
        "CHIFFON_REPLICA": "1",
        "CHIFFON_LOG_LEVEL": "warning",
        "CHIFFON_PRICE_OVERRIDES": json.dumps(OVERRIDES),
    }
    service = start_service("chiffon.cost", "cost-1", env, tmp_path, free_port())
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


async def test_a_replica_killed_holding_a_lease_leaves_the_calls_it_paid_for_counted(
    store: JetStreamEventStore,
    spawn_executor: Spawn,
    client: Any,
    gateway: Service,
    openai_server: FakeOpenAI,
    cost_service: Service,
) -> None:
    worst = worst_case()
    tokens = count_prompt_tokens([{"role": "user", "content": PROMPT}])
    openai_server.usage = {"prompt_tokens": tokens, "completion_tokens": MAX_TOKENS}
    await set_global(store, Decimal("1"))  # far from its limit: a busy replica takes a lease
    env = {
        **llm_env(openai_server),
        "CHIFFON_PRICE_OVERRIDES": json.dumps(OVERRIDES),
        "CHIFFON_BUDGET_RESERVATION_GRACE_SECONDS": "1",  # a lease: 2 x (3 s + 1 s)
        "CHIFFON_PROJECTIONS": "off",
    }
    replica = await spawn_executor(1, env)
    name = f"leased-{uuid.uuid4().hex[:6]}"
    await client.register_workflow(workflow(name, fallback=False, timeout="3s"))

    # Four calls reserved one by one make the budget busy: the replica takes a lease.
    first = await asyncio.gather(*(client.start_run(name, inputs={}) for _ in range(4)))
    for run in first:
        assert (await events_until(client, run["run_id"]))[-1].type == "run.completed"

    async def leased() -> bool:
        _, payloads = await ledger(store)
        return any(
            r.id.startswith("lease:")
            for p in payloads
            if p.event_type == "budget.reserved"
            for r in p.reservations
        )

    await eventually(leased, timeout=10, message="a lease reserved")
    # Three calls drawn from it at once: two answered and paid for, one held in flight.
    answered = 0
    held = asyncio.Event()

    async def script(model: str, messages: Any, schema: Any) -> None:
        nonlocal answered
        answered += 1
        if answered == 3:
            await held.wait()  # never set: in flight until the replica dies
        return None

    openai_server.script = script
    drawn = await asyncio.gather(*(client.start_run(name, inputs={}) for _ in range(3)))
    await eventually(lambda: _true(openai_server.in_flight == 1 and answered == 3), timeout=10)

    async def two_completed() -> bool:
        done = 0
        for run in drawn:
            stored, _ = await store.read_aggregate(AggregateKey("run", run["run_id"]))
            done += any(e.type == "run.completed" for e in stored)
        return done == 2

    await eventually(two_completed, timeout=10, message="the two answered runs completed")
    replica.kill()

    # Until the lease expires it holds its amount; then the cost service settles it at
    # what the two paid calls cost. The budget, as the API answers it: 6 calls spent
    # (4 settled by the replica, 2 from its lease), nothing held.
    async def budget() -> dict[str, Any]:
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as http:
            response = await http.get("/v1/budgets")
        assert response.status_code == 200, response.text
        return next(b for b in response.json()["budgets"] if b["id"] == "global")

    async def counted() -> bool:
        answer = await budget()
        return Decimal(answer["reserved_usd"]) == 0 and Decimal(answer["spent_usd"]) > worst * 4

    await eventually(counted, timeout=20, message="the lease settled from its calls")
    answer = await budget()
    assert Decimal(answer["spent_usd"]) == worst * 6
    events, _ = await store.read_aggregate(AggregateKey("budget", "global"))
    by_cost = [
        (s.reservation_id, s.actual_usd)
        for e in events
        if isinstance(e.payload, BudgetSettled) and e.envelope.actor.id.startswith("cost")
        for s in e.payload.settlements
    ]
    trail = [(e.type, e.envelope.actor.id, e.payload.model_dump(mode="json")) for e in events]
    assert len(by_cost) == 1 and by_cost[0][0].startswith(f"lease:{replica.name}:"), trail
    assert by_cost[0][1] == worst * 2
