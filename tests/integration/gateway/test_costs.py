"""Spend through the API: ``GET /v1/costs`` and a run's ``cost_usd``, against a real
gateway, from the cost service's read model tables (as its projection writes them)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, insert
from sqlalchemy.dialects.postgresql import insert as upsert_into

from chiffon.core.db import create_engine
from chiffon.gateway.costs import cost_calls, cost_runs
from tests.support.fixtures import eventually

from .conftest import Stack, client
from .test_api import problem, start, until_status


def call_row(
    provider: str,
    model: str,
    cost: str | None,
    *,
    prompt: int,
    completion: int,
    workflow: str | None = "bench-three",
    key_id: str | None = None,
    at: datetime,
    run_id: str | None = None,
) -> dict[str, Any]:
    return {
        "llm_event_id": uuid.uuid4().hex,
        "run_id": run_id or str(uuid.uuid4()),
        "workflow": workflow,
        "key_id": key_id,
        "agent_id": None,
        "node_id": "a",
        "provider": provider,
        "model": model,
        "called_at": at,
        "day": at.date(),
        "month": at.strftime("%Y-%m"),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": Decimal(cost) if cost is not None else None,
        "source": "price_map" if cost is not None else "unknown",
    }


# 1999: far from the calls any other test of the package makes, so the window is ours.
DAY1 = datetime(1999, 3, 1, 10, tzinfo=UTC)
DAY2 = datetime(1999, 3, 2, 23, 59, tzinfo=UTC)
ROWS = [
    call_row("openai", "gpt-4o-mini", "0.0000045", prompt=10, completion=5, at=DAY1),
    call_row("openai", "gpt-4o-mini", "0.0000072", prompt=12, completion=9, at=DAY2),
    call_row("anthropic", "claude-3-5-haiku", "0.0010", prompt=100, completion=50, at=DAY2),
    call_row("ollama", "llama3.1", "0", prompt=7, completion=3, workflow=None, at=DAY1),
    call_row("mystery", "unpriced-1", None, prompt=4, completion=2, at=DAY2),
]
WINDOW = {"from": "1999-03-01", "to": "1999-03-02"}


@pytest.fixture(scope="module")
async def priced(stack: Stack) -> Any:
    engine = create_engine(stack.env["CHIFFON_DATABASE_URL"])
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(cost_calls), ROWS)
        yield ROWS
        async with engine.begin() as conn:
            ids = [r["llm_event_id"] for r in ROWS]
            await conn.execute(delete(cost_calls).where(cost_calls.c.llm_event_id.in_(ids)))
    finally:
        await engine.dispose()


async def test_groups_and_totals(stack: Stack, keys: dict[str, str], priced: Any) -> None:
    async with client(stack.gateway, keys["viewer"]) as http:
        response = await http.get("/v1/costs", params={"group_by": "provider", **WINDOW})
        assert response.status_code == 200, response.text
        assert response.json() == {
            "group_by": "provider",
            "groups": [
                {
                    "key": "anthropic",
                    "cost_usd": "0.001",
                    "calls": 1,
                    "unknown_calls": 0,
                    "prompt_tokens": 100,
                    "completion_tokens": 50,
                },
                {
                    "key": "openai",
                    "cost_usd": "0.0000117",
                    "calls": 2,
                    "unknown_calls": 0,
                    "prompt_tokens": 22,
                    "completion_tokens": 14,
                },
                {  # free, then unknown: both 0 known spend, by key
                    "key": "mystery",
                    "cost_usd": "0",
                    "calls": 1,
                    "unknown_calls": 1,
                    "prompt_tokens": 4,
                    "completion_tokens": 2,
                },
                {
                    "key": "ollama",
                    "cost_usd": "0",
                    "calls": 1,
                    "unknown_calls": 0,
                    "prompt_tokens": 7,
                    "completion_tokens": 3,
                },
            ],
            "total_usd": "0.0010117",
        }
        by_day = (await http.get("/v1/costs", params={"group_by": "day", **WINDOW})).json()
        assert [(g["key"], g["cost_usd"], g["calls"]) for g in by_day["groups"]] == [
            ("1999-03-02", "0.0010072", 3),
            ("1999-03-01", "0.0000045", 2),
        ]
        by_workflow = (
            await http.get("/v1/costs", params={"group_by": "workflow", **WINDOW})
        ).json()
        assert [g["key"] for g in by_workflow["groups"]] == ["bench-three", "(none)"]
        # A date-time bound is exact (to is exclusive): the first day only.
        first = (
            await http.get(
                "/v1/costs",
                params={"group_by": "model", "from": "1999-03-01", "to": "1999-03-01T11:00:00Z"},
            )
        ).json()
        assert first["total_usd"] == "0.0000045"
        assert [g["key"] for g in first["groups"]] == ["gpt-4o-mini", "llama3.1"]
        # Bounds past the calendar (the day after 9999-12-31, year 1 moved to UTC) leave
        # the range open on that side.
        wide = await http.get(
            "/v1/costs",
            params={"group_by": "day", "from": "0001-01-01T00:00:00+05:00", "to": "9999-12-31"},
        )
        assert wide.status_code == 200, wide.text
        assert {"1999-03-01", "1999-03-02"} <= {g["key"] for g in wide.json()["groups"]}


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({}, "query.group_by"),
        ({"group_by": "color"}, "query.group_by"),
        ({"group_by": "day", "from": "yesterday"}, "query.from"),
        ({"group_by": "day", "to": "2026-13-01"}, "query.to"),
        ({"group_by": "day", "from": "2026-12-08", "to": "2026-12-07"}, "query.to"),
    ],
)
async def test_bad_report_queries_are_422(
    stack: Stack, keys: dict[str, str], params: dict[str, str], path: str
) -> None:
    async with client(stack.gateway, keys["viewer"]) as http:
        body = problem(await http.get("/v1/costs", params=params), 422, "validation-error")
        assert [e["path"] for e in body["errors"]] == [path], body


async def test_a_run_shows_its_cost(
    stack: Stack, keys: dict[str, str], workflows: list[str]
) -> None:
    async with client(stack.gateway, keys["operator"]) as http:
        run_id = await start(http)
        run = await until_status(http, run_id, "succeeded")
        assert run["cost_usd"] == "0"  # no priced call (yet)
        # The cost service prices the run's calls after it ended: the view follows.
        engine = create_engine(stack.env["CHIFFON_DATABASE_URL"])
        try:
            row = {
                "run_id": run_id,
                "cost_usd": Decimal("0.004200"),
                "calls": 3,
                "unknown_calls": 0,
                "workflow": "bench-three",
                "key_id": None,
                "updated_at": datetime.now(UTC),
            }
            # An upsert: a cost service on the stack may have priced the run already.
            upsert = upsert_into(cost_runs).values(row)
            upsert = upsert.on_conflict_do_update(
                index_elements=[cost_runs.c.run_id], set_={"cost_usd": row["cost_usd"]}
            )
            async with engine.begin() as conn:
                await conn.execute(upsert)
        finally:
            await engine.dispose()

        async def shown() -> str | None:
            response = await http.get(f"/v1/runs/{run_id}")
            cost = response.json()["cost_usd"]
            return str(cost) if cost != "0" else None

        assert await eventually(shown, timeout=10, message="the run's cost") == "0.0042"


async def test_the_report_needs_a_key(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        problem(await http.get("/v1/costs", params={"group_by": "day"}), 401, "unauthorized")
