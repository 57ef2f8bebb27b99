"""The audit search through a real gateway finds what an admin did outside any run: a
key created, a budget set, a trigger created (three streams, three services), by actor
and by type, newest first, each page boundary between two streams."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.fixtures import eventually

from .conftest import AuditServices

TRIGGER_SECRET = "whsec-audited-0123456789abcdef"


async def _pages(http: httpx.AsyncClient, params: dict[str, Any]) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    while True:
        response = await http.get("/v1/audit", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["events"])
        if body["next_cursor"] is None:
            assert "link" not in response.headers
            return pages
        assert 'rel="next"' in response.headers["link"]
        params = {**params, "cursor": body["next_cursor"]}


async def test_keys_budgets_and_triggers_are_found_by_actor_and_type(
    audit_services: AuditServices,
) -> None:
    async with audit_services.client() as admin:
        key = await admin.post("/v1/keys", json={"name": "auditor", "role": "viewer"})
        assert key.status_code == 201, key.text
        budget = await admin.put(
            "/v1/budgets/workflow/audited", json={"period": "day", "hard_usd": "5"}
        )
        assert budget.status_code == 200, budget.text
        trigger = await admin.post(
            "/v1/triggers",
            json={
                "name": "audited-hook",
                "workflow": "audited",
                "scheme": "standard-webhooks",
                "secret": TRIGGER_SECRET,
            },
        )
        assert trigger.status_code == 201, trigger.text
    made = key.json()
    actor = made["created_by"]

    async with audit_services.client(made["key"]) as viewer:

        async def all_three() -> list[list[dict[str, Any]]] | None:
            pages = await _pages(viewer, {"actor": actor, "limit": 1})
            return pages if len(pages) == 3 else None

        pages = await eventually(all_three, timeout=30, message="three events in the index")
        by_type = {
            kind: (await viewer.get("/v1/audit", params={"type": kind})).json()["events"]
            for kind in (
                "apikey.created",
                "budget.set",
                "trigger.created",
            )
        }
        text = (await viewer.get("/v1/audit", params={"actor": actor})).text
        of_key = await viewer.get(
            "/v1/audit", params={"context": "KEYS", "aggregate_id": made["id"]}
        )
        hostile = [
            await viewer.get("/v1/audit", params=params)
            for params in (
                {"context": "%"},
                {"context": "MEMORY"},
                {"aggregate_id": "../x"},
                {"aggregate_id": "%"},
                {"cursor": "YXVkaXQ6MTA"},  # audit:10, a cursor of the run-only search
            )
        ]
        unknown = await viewer.get("/v1/audit", params={"aggregate_id": "no-such-thing"})

    # Newest first, one a page: each page boundary crosses from one stream to another.
    assert [
        [(e["type"], e["context"], e["aggregate_id"], e["run_id"]) for e in page] for page in pages
    ] == [
        [("trigger.created", "TRIGGERS", "audited-hook", None)],
        [("budget.set", "COSTS", "workflow_audited", None)],
        [("apikey.created", "KEYS", made["id"], None)],
    ]
    assert [e["name"] for page in pages for e in page] == [
        "audited-hook",
        "audited",
        "auditor",
    ]
    assert [e["aggregate_id"] for e in by_type["apikey.created"]] == [made["id"]]
    assert [(e["actor"], e["aggregate"]) for e in by_type["budget.set"]] == [(actor, "budget")]
    assert [(e["workflow"], e["aggregate"]) for e in by_type["trigger.created"]] == [
        ("audited", "trigger")
    ]
    assert [e["type"] for e in of_key.json()["events"]] == ["apikey.created"]
    assert [r.status_code for r in hostile] == [422] * len(hostile)
    assert {r.headers["content-type"] for r in hostile} == {"application/problem+json"}
    assert unknown.status_code == 200 and unknown.json()["events"] == []
    # The secrets each answer showed once are in no event of the search.
    assert made["key"] not in text and TRIGGER_SECRET not in text
