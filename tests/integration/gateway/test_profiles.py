"""Profiles, workflow percentiles, comparisons and the run page's waterfall, against the
package's real gateway and executor, from runs the executor really made; the CLI as a
user runs it."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert

from chiffon.core.db import create_engine
from chiffon.gateway.costs import cost_calls
from tests.support.cli import run_cli

from .conftest import Stack, client
from .test_api import problem, start, until_status
from .test_costs import call_row


@dataclass(frozen=True)
class Runs:
    a: str  # bench-three, topic owls
    b: str  # bench-three, topic otters
    approved: str  # needs-approval, approved by an operator


@pytest.fixture(scope="module")
async def runs(stack: Stack, keys: dict[str, str], workflows: list[str]) -> Runs:
    async with client(stack.gateway, keys["operator"]) as http:
        a = await start(http, topic="owls")
        b = await start(http, topic="otters")
        approved = await start(http, "needs-approval", goal="ship")
        await until_status(http, approved, "waiting_approval")
        decided = await http.post(
            f"/v1/runs/{approved}/approvals/sign_off", json={"approve": True, "comment": "ok"}
        )
        assert decided.status_code == 200, decided.text
        for run_id in (a, b, approved):
            await until_status(http, run_id, "succeeded")
    # Run a's first node cost something (as the cost service's projection records it).
    engine = create_engine(stack.env["CHIFFON_DATABASE_URL"])
    try:
        async with engine.begin() as conn:
            row = call_row(
                "openai", "gpt-4o-mini", "0.0021", prompt=10, completion=5, at=datetime.now(UTC)
            )
            await conn.execute(insert(cost_calls), [{**row, "run_id": a, "node_id": "a"}])
    finally:
        await engine.dispose()
    return Runs(a, b, approved)


async def test_a_run_profile_accounts_for_every_node_and_wait(
    stack: Stack, keys: dict[str, str], runs: Runs
) -> None:
    async with client(stack.gateway, keys["viewer"]) as viewer:
        response = await viewer.get(f"/v1/runs/{runs.a}/profile")
        assert response.status_code == 200, response.text
        profile = response.json()
        assert (profile["status"], profile["workflow"]) == ("succeeded", "bench-three")
        assert [n["node_id"] for n in profile["nodes"]] == ["a", "b", "c"]
        assert [s["node_id"] for s in profile["spans"]] == ["a", "b", "c"]
        assert profile["llm_calls"] == 3
        for node in profile["nodes"]:
            assert (node["attempts"], node["retries"], node["status"]) == (1, 0, "succeeded")
            waits = ("model_ms", "agent_ms", "human_ms", "paused_ms", "own_ms")
            parts = sum(node[name] for name in waits)
            assert parts == pytest.approx(node["wall_ms"])
            assert node["share"] == pytest.approx(node["wall_ms"] / profile["wall_ms"])
        # One after the other: the nodes together took no longer than the run.
        assert sum(n["wall_ms"] for n in profile["nodes"]) <= profile["wall_ms"]

        # The approval node's time went to the person who decided.
        waited = (await viewer.get(f"/v1/runs/{runs.approved}/profile")).json()
        sign_off = next(n for n in waited["nodes"] if n["node_id"] == "sign_off")
        assert sign_off["node_type"] == "approval"
        assert 0 < sign_off["human_ms"] <= sign_off["wall_ms"]
        over_half = [n["node_id"] for n in waited["nodes"] if n["share"] > 0.5]
        assert waited["bottleneck"] == (over_half[0] if over_half else None)

        problem(await viewer.get(f"/v1/runs/{uuid.uuid4()}/profile"), 404, "not-found")
        problem(await viewer.get("/v1/runs/a%20b/profile"), 404, "not-found")
    async with httpx.AsyncClient(base_url=stack.gateway.url) as anonymous:
        problem(await anonymous.get(f"/v1/runs/{runs.a}/profile"), 401, "unauthorized")


async def test_a_workflow_profile_spreads_nodes_over_its_last_finished_runs(
    stack: Stack, keys: dict[str, str], runs: Runs
) -> None:
    async with client(stack.gateway, keys["viewer"]) as viewer:
        response = await viewer.get("/v1/profiles", params={"workflow": "bench-three", "last": 2})
        assert response.status_code == 200, response.text
        summary = response.json()
        assert (summary["workflow"], summary["runs"], summary["last"]) == ("bench-three", 2, 2)
        assert [n["node_id"] for n in summary["nodes"]] == ["a", "b", "c"]
        for node in summary["nodes"]:
            assert node["runs"] == 2
            spread = node["wall_ms"]
            assert spread["p50"] <= spread["p95"] <= spread["p99"]
        bad = [
            {"workflow": "bench-three", "last": 0},
            {"workflow": "bench-three", "last": 1001},
            {"workflow": "bench-three", "last": "10; drop table runs"},
            {"workflow": "Bench Three"},
            {"workflow": "x" * 500},
            {"workflow": "' OR 1=1 --"},
            {"workflow": "bench-*"},
            {},
        ]
        for params in bad:
            problem(await viewer.get("/v1/profiles", params=params), 422, "validation-error")
        problem(
            await viewer.get("/v1/profiles", params={"workflow": "no-such-flow"}), 404, "not-found"
        )
        # Still serving.
        again = await viewer.get("/v1/profiles", params={"workflow": "needs-approval"})
        assert again.status_code == 200 and again.json()["runs"] >= 1


async def test_compare_two_runs_node_by_node(
    stack: Stack, keys: dict[str, str], runs: Runs
) -> None:
    async with client(stack.gateway, keys["viewer"]) as viewer:
        response = await viewer.get(f"/v1/runs/{runs.a}/compare/{runs.b}")
        assert response.status_code == 200, response.text
        diff = response.json()
        assert (diff["a"]["run_id"], diff["b"]["run_id"]) == (runs.a, runs.b)
        assert (diff["a"]["cost_usd"], diff["b"]["cost_usd"]) == ("0.0021", "0")
        assert diff["cost_delta_usd"] == "-0.0021"
        first = diff["nodes"][0]
        assert first["node_id"] == "a" and first["cost_delta_usd"] == "-0.0021"
        # The topic differs, so the first node's answer does.
        assert first["a"]["outputs"] != first["b"]["outputs"] and not first["same_outputs"]
        assert not diff["same_outputs"]
        same = (await viewer.get(f"/v1/runs/{runs.a}/compare/{runs.a}")).json()
        assert same["same_outputs"] and same["wall_delta_ms"] == 0
        # Another workflow's run: its nodes stand alone on their side.
        other = (await viewer.get(f"/v1/runs/{runs.a}/compare/{runs.approved}")).json()
        by_node = {n["node_id"]: n for n in other["nodes"]}
        assert by_node["a"]["b"] is None and by_node["sign_off"]["a"] is None
        problem(await viewer.get(f"/v1/runs/{runs.a}/compare/{uuid.uuid4()}"), 404, "not-found")
        problem(await viewer.get(f"/v1/runs/{runs.a}/compare/a.b"), 404, "not-found")


async def test_the_run_page_draws_a_waterfall(
    stack: Stack, keys: dict[str, str], runs: Runs
) -> None:
    async with client(stack.gateway, keys["viewer"]) as viewer:
        page = await viewer.get(f"/runs/{runs.approved}", headers={"Accept": "text/html"})
        assert page.status_code == 200, page.text[:500]
        html = page.text
        assert 'id="waterfall"' in html
        for node_id in ("plan", "sign_off", "done"):
            assert 'class="wf-row' in html and f'data-node="{node_id}"' in html
        panel = await viewer.get(f"/runs/{runs.approved}/panel")
        assert panel.status_code == 200 and 'id="waterfall"' in panel.text


async def test_profile_from_the_cli(
    stack: Stack, keys: dict[str, str], runs: Runs, tmp_path: Path
) -> None:
    """One process start (about 5 s on 2 busy cores): the tables' other shapes are
    unit-tested on the API's answers (tests/unit/gateway/test_profiles_cli.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(CHIFFON_GATEWAY_URL=stack.gateway.url, CHIFFON_API_KEY=keys["viewer"])
    code, out, err = await run_cli(env, "profile", runs.approved, cwd=tmp_path)
    assert code == 0, err
    assert runs.approved in out and "needs-approval" in out
    assert all(node_id in out for node_id in ("plan", "sign_off", "done"))
    async with client(stack.gateway, keys["viewer"]) as viewer:
        shown = (await viewer.get(f"/v1/runs/{runs.approved}/profile")).json()["bottleneck"]
    assert (f"bottleneck: {shown}" if shown else "no node took over half of the run") in out
