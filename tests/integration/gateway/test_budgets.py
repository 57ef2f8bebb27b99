"""Budgets through the API, the CLI and the dashboard, against a real gateway and cost
service: set, list, remove; bad input is a 422 problem and stores nothing; only an admin
changes a budget."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import delete, insert

from chiffon.core.db import create_engine
from chiffon.gateway.costs import cost_calls
from tests.support.cli import run_cli
from tests.support.fixtures import eventually

from .conftest import Stack, client
from .support import ADMIN_KEY, Service
from .test_api import problem, start, until_status
from .test_costs import call_row


def unique_workflow() -> str:
    return "budgeted-" + uuid.uuid4().hex[:8]


async def listed(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await http.get("/v1/budgets")
    assert response.status_code == 200, response.text
    return {b["id"]: b for b in response.json()["budgets"]}


async def test_set_list_remove(stack: Stack, keys: dict[str, str], cost_service: Service) -> None:
    workflow = unique_workflow()
    async with client(stack.gateway, keys["admin"]) as http:
        response = await http.put(
            f"/v1/budgets/workflow/{workflow}",
            json={
                "period": "day",
                "hard_usd": "0.50",
                "soft_usd": 0.4,  # a number is read through its text, not as a float
                "timezone": "Europe/Berlin",
            },
        )
        assert response.status_code == 200, response.text
        budget = response.json()
        assert {k: budget[k] for k in ("id", "scope", "scope_id", "period", "timezone")} == {
            "id": f"workflow_{workflow}",
            "scope": "workflow",
            "scope_id": workflow,
            "period": "day",
            "timezone": "Europe/Berlin",
        }
        assert Decimal(budget["hard_usd"]) == Decimal("0.5")
        assert Decimal(budget["soft_usd"]) == Decimal("0.4")
        assert Decimal(budget["spent_usd"]) == 0 and Decimal(budget["reserved_usd"]) == 0
        assert budget["soft_reached"] is False
        # The day is Berlin's: it starts at 23:00 or 22:00 UTC.
        start = datetime.fromisoformat(budget["period_start"]).astimezone(UTC)
        assert start.hour in (22, 23) and start.minute == 0

    async with client(stack.gateway, keys["viewer"]) as viewer:
        assert f"workflow_{workflow}" in await listed(viewer)
        refused = await viewer.put(
            f"/v1/budgets/workflow/{workflow}", json={"period": "day", "hard_usd": "100"}
        )
        problem(refused, 403, "forbidden")
        problem(await viewer.delete(f"/v1/budgets/workflow/{workflow}"), 403, "forbidden")
        assert (await listed(viewer))[f"workflow_{workflow}"]["hard_usd"] == budget["hard_usd"]

    async with client(stack.gateway, keys["admin"]) as http:
        removed = await http.delete(f"/v1/budgets/workflow/{workflow}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["removed"] is True
        assert f"workflow_{workflow}" not in await listed(http)
        problem(await http.delete(f"/v1/budgets/workflow/{workflow}"), 404, "not-found")


BAD = [
    # (path, body, the error's path)
    ("workflow/{w}", {"period": "day", "hard_usd": "-1"}, "body.hard_usd"),
    ("workflow/{w}", {"period": "day", "hard_usd": "NaN"}, "body.hard_usd"),
    ("workflow/{w}", {"period": "day", "hard_usd": "Infinity"}, "body.hard_usd"),
    ("workflow/{w}", {"period": "day", "hard_usd": "lots"}, "body.hard_usd"),
    ("workflow/{w}", {"period": "day", "hard_usd": True}, "body.hard_usd"),
    ("workflow/{w}", {"period": "day", "soft_usd": "0.0000000000001"}, "body.soft_usd"),
    ("workflow/{w}", {"period": "day", "hard_usd": "1", "soft_usd": "2"}, "body.soft_usd"),
    ("workflow/{w}", {"period": "week", "hard_usd": "1"}, "body.period"),
    ("workflow/{w}", {"period": "day", "hard_usd": "1", "colour": "red"}, "body.colour"),
    ("team/{w}", {"period": "day", "hard_usd": "1"}, "path.scope"),
    ("global/{w}", {"period": "day", "hard_usd": "1"}, "path.id"),
    ("workflow/Not%20A%20Name", {"period": "day", "hard_usd": "1"}, "path.id"),
    ("run/{w}.x", {"period": "day", "hard_usd": "1"}, "path.id"),
]


async def test_bad_input_is_422_and_stores_nothing(
    stack: Stack, keys: dict[str, str], cost_service: Service
) -> None:
    workflow = unique_workflow()
    async with client(stack.gateway, keys["admin"]) as http:
        before = await listed(http)
        for path, body, where in BAD:
            response = await http.put(f"/v1/budgets/{path.format(w=workflow)}", json=body)
            found = problem(response, 422, "validation-error")
            assert where in [e["path"] for e in found["errors"]], (path, body, found)
        # The cost service's own check (its zone database): still a 422 problem.
        zone = await http.put(
            f"/v1/budgets/workflow/{workflow}",
            json={"period": "day", "hard_usd": "1", "timezone": "Mars/Olympus_Mons"},
        )
        assert "timezone" in str(problem(zone, 422, "validation-error")["errors"])
        assert await listed(http) == before


async def test_cli_sets_lists_and_removes(stack: Stack, cost_service: Service) -> None:
    env = {**stack.env, "CHIFFON_GATEWAY_URL": stack.gateway.url, "CHIFFON_API_KEY": ADMIN_KEY}
    workflow = unique_workflow()
    code, out, err = await run_cli(
        env, "cost", "budget", "set", "workflow", workflow, "--period", "month", "--hard", "2",
        "--soft", "1.5", "--timezone", "America/New_York",
    )  # fmt: skip
    assert code == 0, err
    assert f"budget workflow_{workflow}" in out and "America/New_York" in out
    code, out, err = await run_cli(env, "cost", "budgets")
    assert code == 0, err
    assert f"workflow_{workflow}" in out and "America/New_York" in out
    code, out, err = await run_cli(
        env, "cost", "budget", "set", "workflow", workflow, "--period", "day", "--hard", "-3"
    )
    assert code == 2 and "hard_usd" in err and "negative" in err, (out, err)
    code, out, err = await run_cli(env, "cost", "budget", "remove", "workflow", workflow)
    assert code == 0 and "removed" in out, err


async def test_a_run_is_priced_into_the_report(
    stack: Stack, cost_service: Service, workflows: list[str]
) -> None:
    """End to end: a run's calls priced by the cost service (the offline model: local,
    exactly 0) reach the report under the key that started it, and the run's cost_usd."""
    async with client(stack.gateway, ADMIN_KEY) as admin:
        made = await admin.post("/v1/keys", json={"name": "priced", "role": "operator"})
        assert made.status_code == 201, made.text
    key_id, secret = made.json()["id"], made.json()["key"]
    async with client(stack.gateway, secret) as http:
        run_id = await start(http)
        run = await until_status(http, run_id, "succeeded")
        today = datetime.now(UTC).date().isoformat()

        async def priced() -> dict[str, Any] | None:
            answer = (await http.get("/v1/costs", params={"group_by": "key", "from": today})).json()
            found = [g for g in answer["groups"] if g["key"] == key_id]
            return found[0] if found and found[0]["calls"] == 3 else None

        group = await eventually(priced, timeout=20, message="the run's calls in the report")
        assert group == {
            "key": key_id,
            "cost_usd": "0",
            "calls": 3,
            "unknown_calls": 0,
            "prompt_tokens": run["prompt_tokens"],
            "completion_tokens": run["completion_tokens"],
        }
        assert (await http.get(f"/v1/runs/{run_id}")).json()["cost_usd"] == "0"


async def test_dashboard_costs_page(
    stack: Stack, cost_service: Service, keys: dict[str, str]
) -> None:
    now = datetime.now(UTC)
    workflow = unique_workflow()
    row = call_row("openai", "gpt-4o", "0.25", prompt=10, completion=5, workflow=workflow, at=now)
    engine = create_engine(stack.env["CHIFFON_DATABASE_URL"])
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(cost_calls), [row])
        async with client(stack.gateway, keys["admin"]) as http:
            put = await http.put(
                f"/v1/budgets/workflow/{workflow}",
                json={"period": "month", "hard_usd": "10", "soft_usd": "5"},
            )
            assert put.status_code == 200, put.text
        async with httpx.AsyncClient(base_url=stack.gateway.url) as browser:
            page = await browser.get("/costs", headers={"Cookie": f"chiffon_session={ADMIN_KEY}"})
        assert page.status_code == 200, page.text
        html = page.text
        assert '<a href="/costs" aria-current="page">Costs</a>' in html
        assert '<svg id="spend-chart"' in html
        assert html.count('class="bar-day"') == 30
        today = f'data-day="{now.date().isoformat()}"'
        assert today in html and 'height="0.0"' in html  # days without calls: empty bars
        assert workflow in html.split('id="top-workflows"')[1].split("</table>")[0]
        assert f"workflow_{workflow}" in html.split('id="budgets"')[1]
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                delete(cost_calls).where(cost_calls.c.llm_event_id == row["llm_event_id"])
            )
        await engine.dispose()
