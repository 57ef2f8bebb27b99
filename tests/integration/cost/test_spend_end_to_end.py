"""A run whose LLM calls go through LiteLLM to the OpenAI-compatible test server, which
reports cached and reasoning tokens in its usage: the cost service (a process) prices the
calls the executor recorded into the spend read models, to the exact decimal."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.cost.readmodel import cost_calls, cost_runs
from chiffon.events.runs import LlmCalled
from chiffon.eventstore import JetStreamEventStore
from tests.integration.cost.test_pricing import _is, cost  # noqa: F401 — the cost fixture
from tests.integration.executor.graph_support import RunLog, provider, run  # noqa: F401
from tests.integration.executor.openai_server import FakeOpenAI
from tests.integration.gateway.support import Service
from tests.support.fixtures import eventually

PRICED = """
name: priced
version: 1
defaults: {model: openai/gpt-4o-mini}
nodes:
  - {id: summarise, type: llm, prompt: "summarise owls", output: {summary: string}}
  - {id: title, type: llm, prompt: "a title for {summary}", output: {title: string}}
edges:
  - {from: summarise, to: title}
"""


async def test_a_runs_llm_calls_are_priced_with_their_cached_and_reasoning_tokens(
    store: JetStreamEventStore,
    engine: AsyncEngine,
    provider: FakeOpenAI,
    cost: Service,  # noqa: F811
) -> None:
    provider.usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 50,
        "prompt_tokens_details": {"cached_tokens": 600},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    outcome, log, _llm = await run(RunLog(store), PRICED)
    assert outcome == "succeeded"
    calls = [e for e in await log.of() if isinstance(e.payload, LlmCalled)]
    assert [(c.payload.cached_read_tokens, c.payload.reasoning_tokens) for c in calls] == [
        (600, 20),
        (600, 20),
    ]

    await eventually(lambda: _is(engine, 2), timeout=30, message="both calls priced")
    # gpt-4o-mini: 400 input at 0.15/M, 600 cached at 0.075/M, 50 output at 0.60/M (the
    # map has no reasoning price for it: reasoning tokens are output tokens).
    each = 400 * Decimal("0.00000015") + 600 * Decimal("0.000000075") + 50 * Decimal("0.0000006")
    assert each == Decimal("0.000135")
    async with engine.connect() as conn:
        rows = (await conn.execute(select(cost_calls).order_by(cost_calls.c.called_at))).all()
        total = (await conn.execute(select(cost_runs))).one()
    assert [(r.node_id, r.cost_usd, r.source, r.workflow) for r in rows] == [
        ("summarise", each, "price_map", "priced"),
        ("title", each, "price_map", "priced"),
    ]
    assert (total.run_id, total.cost_usd, total.calls, total.unknown_calls) == (
        log.run_id,
        2 * each,
        2,
        0,
    )
