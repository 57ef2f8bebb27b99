"""An llm node under hard budgets, on the in-memory store: a call is reserved before it
goes out and settled at its price after; refused, the node takes its free fallback (with
the reason recorded) or the run pauses; ``prefer_local_below`` sends it to the local
fallback first; a model without a price is refused under a hard budget. And the runs
paused for budget are resumed when the budget is raised or its period rolls over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.costs import BudgetSet, BudgetSettled, Settlement
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.executor.budgets.gate import BudgetGate, provider_of
from chiffon.executor.budgets.reserver import Reserver
from chiffon.executor.budgets.resumer import BudgetResumer
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelReply, ModelRequest, ProviderError
from chiffon.executor.outputs import OutputStore
from chiffon.executor.repository import RunRepository
from chiffon.spend.prices import PriceBook
from chiffon.workflow import load_spec

KEY_ACTOR = Actor(kind="api_key", id="k1", name="ci")
ADMIN = Actor(kind="user", id="admin")
EXECUTOR = Actor.service("executor", 1)
PRICED = "openai/chiffon-test-priced"
PRICES = PriceBook.load({PRICED: {"input_per_token": "0.0001", "output_per_token": "0.0002"}})
T0 = datetime(2026, 12, 7, 22, 30, tzinfo=UTC)  # 23:30 in Berlin


def workflow(fallbacks: str = "", extra: str = "") -> str:
    return f"""
name: frugal
version: 1
nodes:
  - id: draft
    type: llm
    model: {PRICED}
    fallbacks: [{fallbacks}]
    prompt: "hi"
    max_tokens: 100
{extra}
"""


class Models:
    """Answers every model at once, reporting usage; remembers what was asked."""

    def __init__(self, *, failing: str = "", completion_tokens: int = 5) -> None:
        self.asked: list[str] = []
        self.failing = failing  # this model answers with a provider error
        self.completion_tokens = completion_tokens

    def in_process(self, model: str) -> bool:
        return True

    async def complete(self, request: ModelRequest) -> ModelReply:
        self.asked.append(request.model)
        if request.model == self.failing:
            raise ProviderError(request.model, "connection refused", provider="ollama")
        return ModelReply(
            text="ok",
            provider=provider_of(request.model),
            model=request.model,
            prompt_tokens=10,
            completion_tokens=self.completion_tokens,
            latency_ms=1.0,
            finish_reason="stop",
            cached_read_tokens=2,
            reasoning_tokens=1,
        )


async def set_budget(
    store: InMemoryEventStore, hard: str, *, period: str = "lifetime", tz: str = "UTC"
) -> None:
    payload = BudgetSet(
        scope="workflow",
        scope_id="frugal",
        period=period,  # type: ignore[arg-type]
        hard_usd=Decimal(hard),
        timezone=tz,
    )
    key = AggregateKey("budget", "workflow_frugal")
    await store.append(key, [new_event(payload, aggregate_id=key.aggregate_id, actor=ADMIN)])


async def run(
    store: InMemoryEventStore,
    text: str,
    run_id: str = "run-1",
    models: Models | None = None,
    gate: BudgetGate | None = None,
) -> tuple[str, list[Any], Models, BudgetDirectory]:
    spec = load_spec(text)
    key = AggregateKey("run", run_id)
    request = RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs={})
    await store.append(key, [new_event(request, aggregate_id=run_id, actor=KEY_ACTOR)])
    claim = RunClaimed(executor="executor-1", pid=1, work_seq=1)
    await store.append(key, [new_event(claim, aggregate_id=run_id, actor=EXECUTOR)])
    events, _ = await store.read_aggregate(key)
    directory = gate.directory if gate is not None else BudgetDirectory(store)
    await directory.load()
    models = models or Models()
    execution = RunExecution(
        store=store,
        workflow=LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec)),
        run=RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events]),
        actor=EXECUTOR,
        llm=models,  # type: ignore[arg-type]
        outputs=OutputStore(store, "test"),
        budget=gate
        or BudgetGate(directory, Reserver(store, directory, EXECUTOR), PRICES, leases=False),
    )
    outcome = await execution.execute()
    if gate is None:  # a gate of the test's own is drained by the test
        assert execution.budget is not None
        await execution.budget.drain()  # the settlement, appended while the run went on
    stored, _ = await store.read_aggregate(key)
    return outcome, [e.payload for e in stored], models, directory


def calls(payloads: list[Any]) -> list[Any]:
    return [p for p in payloads if p.event_type == "run.llm.called"]


async def ledger(store: InMemoryEventStore) -> Any:
    return await BudgetDirectory(store).catch_up("workflow_frugal")


async def test_a_call_within_budget_is_reserved_then_settled_at_its_price() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "1")

    outcome, payloads, models, _ = await run(store, workflow())

    assert outcome == "succeeded"
    (called,) = calls(payloads)
    assert (called.model, called.budget_note) == (PRICED, None)
    assert (called.cached_read_tokens, called.reasoning_tokens) == (2, 1)
    assert called.budget_holds == ("run-1:draft:1:0",)  # held by its own reservation
    budget = await ledger(store)
    # 10 prompt tokens at 0.0001, 5 completion tokens at 0.0002
    assert budget.spent(T0) == Decimal("0.0020")
    assert budget.reserved(T0) == 0
    events, _ = await store.read_aggregate(AggregateKey("budget", "workflow_frugal"))
    assert [e.type for e in events] == ["budget.set", "budget.reserved", "budget.settled"]
    assert events[1].payload.reservations[0].id == "run-1:draft:1:0"


async def test_refused_the_node_takes_its_free_fallback_and_says_why() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.001")  # below the worst case: 100 output tokens alone 0.02

    outcome, payloads, models, _ = await run(
        store, workflow("openai/gpt-unpriced-x, ollama_chat/llama3.1")
    )

    assert outcome == "succeeded"
    assert models.asked == ["ollama_chat/llama3.1"]  # the unpriced one is not cheaper
    (called,) = calls(payloads)
    assert called.fallback_index == 2
    assert "workflow_frugal" in called.budget_note
    assert "ollama_chat/llama3.1" in called.budget_note
    assert (await ledger(store)).spent(T0) == 0


async def test_refused_with_no_fallback_that_fits_the_run_pauses_for_the_budget() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.001")

    outcome, payloads, models, _ = await run(store, workflow())

    assert outcome == "paused"
    assert models.asked == []
    paused = payloads[-1]
    assert (paused.reason, paused.node_id, paused.budget) == ("budget", "draft", "workflow_frugal")
    assert paused.needed_usd > Decimal("0.02")
    assert (await ledger(store)).reserved(T0) == 0


async def test_below_prefer_local_below_the_local_fallback_goes_first() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.25")
    spent = BudgetSettled(settlements=[Settlement(reservation_id="x", actual_usd=Decimal("0.2"))])
    key = AggregateKey("budget", "workflow_frugal")
    await store.append(key, [new_event(spent, aggregate_id=key.aggregate_id, actor=EXECUTOR)])
    extra = "defaults:\n  prefer_local_below: 50%"
    outcome, payloads, models, _ = await run(store, workflow("ollama/qwen", extra))

    assert outcome == "succeeded"
    assert models.asked == ["ollama/qwen"]
    (called,) = calls(payloads)
    assert called.budget_note == (
        "budget workflow_frugal has 20% left (prefer_local_below 50%): ollama/qwen tried first"
    )


async def test_a_preferred_local_model_that_fails_leaves_the_priced_call_unnoted() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.25")
    spent = BudgetSettled(settlements=[Settlement(reservation_id="x", actual_usd=Decimal("0.2"))])
    key = AggregateKey("budget", "workflow_frugal")
    await store.append(key, [new_event(spent, aggregate_id=key.aggregate_id, actor=EXECUTOR)])
    extra = "defaults:\n  prefer_local_below: 50%"

    outcome, payloads, models, _ = await run(
        store, workflow("ollama/qwen", extra), models=Models(failing="ollama/qwen")
    )

    assert outcome == "succeeded"
    assert models.asked == ["ollama/qwen", PRICED]
    local, priced = calls(payloads)
    assert (local.ok, "tried first" in local.budget_note) == (False, True)
    assert (priced.ok, priced.budget_note, priced.fallback_index) == (True, None, 0)


async def test_a_call_costing_more_than_its_reservation_is_recorded_at_its_real_cost() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "1")

    # 1000 completion tokens where max_tokens allowed 100: above the worst case.
    outcome, _, _, _ = await run(store, workflow(), models=Models(completion_tokens=1000))

    assert outcome == "succeeded"
    assert (await ledger(store)).spent(T0) == Decimal("0.2010")


async def test_a_model_without_a_price_is_refused_under_a_hard_budget() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "100")
    text = workflow().replace(PRICED, "openai/gpt-unpriced-x")

    outcome, payloads, models, _ = await run(store, text)

    assert outcome == "failed"
    assert models.asked == []
    error = payloads[-1].error
    assert error.type == "price_unknown"
    assert "CHIFFON_PRICE_OVERRIDES" in error.message


async def test_a_run_paused_for_budget_resumes_when_the_budget_is_raised() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.001")
    outcome, payloads, _, directory = await run(store, workflow())
    assert outcome == "paused"
    resumer = BudgetResumer(store, directory, RunRepository(store), EXECUTOR, clock=lambda: T0)
    resumer.apply("run-1", payloads[-1], T0)

    assert await resumer.sweep() == 0
    await set_budget(store, "5")
    await directory.catch_up("workflow_frugal")
    assert await resumer.sweep() == 1

    events, _ = await store.read_aggregate(AggregateKey("run", "run-1"))
    assert events[-1].type == "run.resumed"
    assert "room" in events[-1].payload.reason


async def test_a_run_paused_for_a_daily_budget_resumes_at_midnight_in_its_time_zone() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.001", period="day", tz="Europe/Berlin")
    outcome, payloads, _, directory = await run(store, workflow())
    assert outcome == "paused"
    now = [T0]
    resumer = BudgetResumer(store, directory, RunRepository(store), EXECUTOR, clock=lambda: now[0])
    resumer.apply("run-1", payloads[-1], T0)

    now[0] = T0 + timedelta(minutes=29)  # 23:59 in Berlin
    assert await resumer.sweep() == 0
    now[0] = T0 + timedelta(minutes=30)  # midnight in Berlin, 23:00 UTC
    assert await resumer.sweep() == 1


async def test_a_raise_that_fits_one_more_call_resumes_one_paused_run_not_all() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.001")
    paused = []
    for n in range(3):
        outcome, payloads, _, directory = await run(store, workflow(), run_id=f"run-{n}")
        assert outcome == "paused"
        paused.append(payloads[-1])
    resumer = BudgetResumer(store, directory, RunRepository(store), EXECUTOR, clock=lambda: T0)
    for n, pause in enumerate(paused):
        resumer.apply(f"run-{n}", pause, T0)

    await set_budget(store, str(paused[0].needed_usd * 3 / 2))  # room for one worst case
    await directory.catch_up("workflow_frugal")

    assert await resumer.sweep() == 1
    assert len(resumer.paused) == 2


async def test_far_from_the_limit_calls_draw_from_a_lease_without_a_round_trip() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "100")
    directory = BudgetDirectory(store)
    gate = BudgetGate(directory, Reserver(store, directory, EXECUTOR), PRICES)

    holds: list[tuple[str, ...]] = []
    for n in range(10):
        outcome, payloads, _, _ = await run(store, workflow(), run_id=f"run-{n}", gate=gate)
        assert outcome == "succeeded"
        holds.extend(c.budget_holds for c in calls(payloads))
    lease = gate.leases["workflow_frugal"]
    assert lease.live == 0 and lease.spent == Decimal("0.0120")  # 6 calls drawn from it
    await gate.drain()  # the lease given back: settled at what its calls cost

    events, _ = await store.read_aggregate(AggregateKey("budget", "workflow_frugal"))
    reserved = [r for e in events if e.type == "budget.reserved" for r in e.payload.reservations]
    # The first calls on their own, until the budget is busy enough for a lease.
    assert [r.id for r in reserved[:4]] == [f"run-{n}:draft:1:0" for n in range(4)]
    assert reserved[4].id.startswith("lease:") and len(reserved) == 5
    # Each call's run.llm.called says what held it: its reservation, or the lease.
    assert holds[:4] == [(f"run-{n}:draft:1:0",) for n in range(4)]
    assert holds[4:] == [(reserved[4].id,)] * 6
    budget = await ledger(store)
    assert (budget.spent(T0), budget.reserved(T0)) == (Decimal("0.0200"), 0)


async def test_near_the_limit_no_lease_is_taken() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "0.1")  # four worst cases: too few for a lease
    directory = BudgetDirectory(store)
    gate = BudgetGate(directory, Reserver(store, directory, EXECUTOR), PRICES)

    for n in range(3):
        outcome, _, _, _ = await run(store, workflow(), run_id=f"run-{n}", gate=gate)
        assert outcome == "succeeded"

    assert gate.leases == {}
    events, _ = await store.read_aggregate(AggregateKey("budget", "workflow_frugal"))
    reserved = [r.id for e in events if e.type == "budget.reserved" for r in e.payload.reservations]
    assert reserved == ["run-0:draft:1:0", "run-1:draft:1:0", "run-2:draft:1:0"]


async def test_a_lease_never_outlives_its_period_and_none_is_taken_too_near_its_end() -> None:
    store = InMemoryEventStore(CATALOG)
    await set_budget(store, "100", period="day", tz="Europe/Berlin")
    midnight = datetime(2026, 12, 7, 23, 0, tzinfo=UTC)  # in Berlin
    now = [midnight - timedelta(minutes=15)]  # a call holds its 600 s timeout + 30 s

    def clock() -> datetime:
        return now[0]

    directory = BudgetDirectory(store)
    gate = BudgetGate(
        directory, Reserver(store, directory, EXECUTOR, clock=clock), PRICES, clock=clock
    )
    for n in range(6):
        assert (await run(store, workflow(), run_id=f"a-{n}", gate=gate))[0] == "succeeded"
    assert gate.leases["workflow_frugal"].expires_at == midnight  # not a second later
    await gate.drain()

    now[0] = midnight - timedelta(minutes=10)  # less than a call's hold before midnight
    for n in range(6):
        assert (await run(store, workflow(), run_id=f"b-{n}", gate=gate))[0] == "succeeded"
    assert gate.leases == {}
    await gate.drain()
