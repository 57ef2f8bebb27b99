"""The REST API through a real gateway and executor: every endpoint, every role."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from tests.support.fixtures import eventually

from .conftest import Stack, client
from .support import ADMIN_KEY, THREE_NODES, collect

PROBLEM = "application/problem+json"
TYPES = "https://chiffon.dev/problems/"


def problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["type"] == TYPES + kind, body
    assert body["status"] == status
    assert body["title"]
    return body


async def start(http: httpx.AsyncClient, workflow: str = "bench-three", **inputs: Any) -> str:
    response = await http.post(
        "/v1/runs", json={"workflow": workflow, "inputs": inputs or {"topic": "owls"}}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


async def until_status(
    http: httpx.AsyncClient, run_id: str, *statuses: str, timeout: float = 20
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        response = await http.get(f"/v1/runs/{run_id}")
        if response.status_code == 200 and response.json()["status"] in statuses:
            return response.json()  # type: ignore[no-any-return]
        return None

    return await eventually(probe, timeout=timeout, message=f"run {run_id} in {statuses}")


# -- every endpoint × every role -----------------------------------------------------

RUN = "00000000-0000-7000-8000-000000000000"  # a well-formed id no run has

ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    # (needed role, method, path, json body)
    ("viewer", "GET", "/v1/me", None),
    ("viewer", "GET", "/v1/workflows", None),
    ("viewer", "GET", "/v1/workflows/bench-three", None),
    ("viewer", "GET", "/v1/runs", None),
    ("viewer", "GET", f"/v1/runs/{RUN}", None),
    ("viewer", "GET", f"/v1/runs/{RUN}/events?follow=false", None),
    ("viewer", "GET", "/v1/approvals", None),
    ("operator", "POST", "/v1/runs", {"workflow": "bench-three", "inputs": {"topic": "roles"}}),
    ("operator", "POST", f"/v1/runs/{RUN}/cancel", {"reason": "test"}),
    ("operator", "POST", f"/v1/runs/{RUN}/approvals/sign_off", {"approve": True}),
    ("admin", "POST", "/v1/workflows", None),
    ("admin", "GET", "/v1/keys", None),
    ("admin", "POST", "/v1/keys", {"name": "made-in-role-test", "role": "viewer"}),
    ("admin", "GET", f"/v1/keys/{RUN}", None),
    ("admin", "POST", f"/v1/keys/{RUN}/revoke", None),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2, "bootstrap": 2}


async def call(
    http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> httpx.Response:
    if path == "/v1/workflows" and method == "POST":
        return await http.post(
            path, content=THREE_NODES, headers={"Content-Type": "application/yaml"}
        )
    return await http.request(method, path, json=body)


async def test_every_endpoint_every_role(
    stack: Stack, keys: dict[str, str], workflows: list[str]
) -> None:
    outcomes = []
    for role, key in keys.items():
        async with client(stack.gateway, key) as http:
            for needed, method, path, body in ENDPOINTS:
                response = await call(http, method, path, body)
                allowed = RANK[role] >= RANK[needed]
                if allowed:
                    ok = response.status_code not in (401, 403) and response.status_code < 500
                else:
                    ok = (
                        response.status_code == 403
                        and response.json()["type"] == TYPES + "forbidden"
                    )
                outcomes.append((role, method, path, response.status_code, ok))
    wrong = [o for o in outcomes if not o[-1]]
    assert not wrong, wrong
    # Anonymous, a malformed header and an unknown key: 401 everywhere, with a challenge.
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer chf_nope"},
    ):
        async with httpx.AsyncClient(base_url=stack.gateway.url, headers=headers) as http:
            for _needed, method, path, body in ENDPOINTS:
                response = await call(http, method, path, body)
                problem(response, 401, "unauthorized")
                assert response.headers["www-authenticate"].startswith("Bearer")


async def test_viewer_cannot_start_and_operator_cannot_register(
    stack: Stack, keys: dict[str, str], workflows: list[str]
) -> None:
    async with client(stack.gateway, keys["viewer"]) as viewer:
        body = problem(
            await viewer.post(
                "/v1/runs", json={"workflow": "bench-three", "inputs": {"topic": "x"}}
            ),
            403,
            "forbidden",
        )
        assert "operator" in body["detail"]
    async with client(stack.gateway, keys["operator"]) as operator:
        response = await operator.post(
            "/v1/workflows", content=THREE_NODES, headers={"Content-Type": "application/yaml"}
        )
        problem(response, 403, "forbidden")
        problem(await operator.get("/v1/keys"), 403, "forbidden")


async def test_health_needs_no_key(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        components = ready.json()["components"]
        assert {"nats", "postgres", "keys", "read models", "projection:gateway.api_keys"} <= set(
            components
        )


# -- workflows -----------------------------------------------------------------------


async def test_register_workflow_yaml_and_json(admin: httpx.AsyncClient, stack: Stack) -> None:
    name = "wf-" + uuid.uuid4().hex[:8]
    source = THREE_NODES.replace("name: bench-three", f"name: {name}")
    created = await admin.post(
        "/v1/workflows", content=source, headers={"Content-Type": "application/yaml"}
    )
    assert created.status_code == 201, created.text
    assert created.json() == {**created.json(), "name": name, "version": 1, "created": True}
    assert created.headers["location"] == f"/v1/workflows/{name}?version=1"
    again = await admin.post(
        "/v1/workflows", content=source, headers={"Content-Type": "application/yaml"}
    )
    assert again.status_code == 200 and again.json()["created"] is False
    # Read your write: the read model may lag; the gateway waits for it (bounded).
    got = await admin.get(f"/v1/workflows/{name}")
    assert got.status_code == 200, got.text
    assert got.json()["source"] == source and got.json()["versions"] == [1]
    # The same name, other content, same version: 409.
    changed = source.replace("facts about", "things about")
    problem(
        await admin.post(
            "/v1/workflows", content=changed, headers={"Content-Type": "application/yaml"}
        ),
        409,
        "conflict",
    )
    # A run without a version starts the latest one, including one registered just now.
    first_run = await admin.post("/v1/runs", json={"workflow": name, "inputs": {"topic": "x"}})
    assert first_run.status_code == 202 and first_run.json()["version"] == 1, first_run.text
    # JSON, version 2.
    import yaml

    document = yaml.safe_load(source)
    document["version"] = 2
    second = await admin.post("/v1/workflows", json=document)
    assert second.status_code == 201, second.text
    latest = await admin.post("/v1/runs", json={"workflow": name, "inputs": {"topic": "x"}})
    assert latest.status_code == 202 and latest.json()["version"] == 2, latest.text
    listed = await eventually(
        lambda: _versions(admin, name), message="version 2 listed", timeout=10
    )
    assert listed == 2
    v1 = await admin.get(f"/v1/workflows/{name}", params={"version": 1})
    assert v1.json()["version"] == 1
    problem(await admin.get(f"/v1/workflows/{name}", params={"version": 9}), 404, "not-found")
    problem(await admin.get("/v1/workflows/no-such-workflow"), 404, "not-found")


async def _versions(http: httpx.AsyncClient, name: str) -> int | None:
    found = [w for w in (await http.get("/v1/workflows")).json()["workflows"] if w["name"] == name]
    return found[0]["version"] if found and found[0]["version"] == 2 else None


async def test_invalid_workflow_lists_every_error_with_line(
    admin: httpx.AsyncClient, stack: Stack
) -> None:
    source = "name: Bad Name\nversion: 0\nnodes:\n  - {id: a, type: nope}\n"
    body = problem(
        await admin.post(
            "/v1/workflows", content=source, headers={"Content-Type": "application/yaml"}
        ),
        422,
        "validation-error",
    )
    assert len(body["errors"]) >= 2
    assert all({"path", "line", "message"} <= set(e) for e in body["errors"])
    assert any(e["line"] for e in body["errors"])


# -- runs ------------------------------------------------------------------------------


async def test_run_lifecycle_and_actor(
    stack: Stack, keys: dict[str, str], workflows: list[str]
) -> None:
    async with client(stack.gateway, keys["operator"]) as http:
        me = (await http.get("/v1/me")).json()
        run_id = await start(http)
        events = await collect(http, f"/v1/runs/{run_id}/events")
        assert [e.event for e in events][0] == "run.requested"
        assert events[-1].event == "run.completed"
        requested = events[0].data
        assert requested["actor"] == {"kind": "api_key", "id": me["id"], "name": "test-operator"}
        run = await until_status(http, run_id, "succeeded")
        assert run["requested_by"] == f"api_key:{me['id']}"
        assert [n["node_id"] for n in run["nodes"]] == ["a", "b", "c"]
        assert all(
            n["status"] == "succeeded" and n["duration_ms"] is not None for n in run["nodes"]
        )
        assert run["outputs"] and run["inputs"] == {"topic": "owls"}
        assert run["prompt_tokens"] > 0
        # An ended run is immutable: ETag and 304.
        first = await http.get(f"/v1/runs/{run_id}")
        etag = first.headers["etag"]
        again = await http.get(f"/v1/runs/{run_id}", headers={"If-None-Match": etag})
        assert again.status_code == 304
        listed = (
            await http.get("/v1/runs", params={"workflow": "bench-three", "status": "succeeded"})
        ).json()
        assert run_id in [r["run_id"] for r in listed["runs"]]


async def test_traceparent_flows_into_the_events(
    admin: httpx.AsyncClient, workflows: list[str]
) -> None:
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    response = await admin.post(
        "/v1/runs",
        json={"workflow": "bench-three", "inputs": {"topic": "trace"}},
        headers={"traceparent": parent},
    )
    run_id = response.json()["run_id"]
    events = await collect(admin, f"/v1/runs/{run_id}/events")
    assert events[0].data["trace"].split("-")[1] == trace_id


async def test_list_runs_paginates(admin: httpx.AsyncClient, workflows: list[str]) -> None:
    ids = [await start(admin, topic=f"page {i}") for i in range(5)]

    async def all_listed() -> bool:
        page = (await admin.get("/v1/runs", params={"limit": 100})).json()
        return set(ids) <= {r["run_id"] for r in page["runs"]}

    await eventually(all_listed, message="runs listed")
    seen: list[str] = []
    cursor = None
    for _ in range(50):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await admin.get("/v1/runs", params=params)
        page = response.json()
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if not cursor:
            assert "link" not in response.headers
            break
        assert 'rel="next"' in response.headers["link"]
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    problem(await admin.get("/v1/runs", params={"cursor": "not-a-cursor"}), 422, "validation-error")
    problem(await admin.get("/v1/runs", params={"status": "bogus"}), 422, "validation-error")
    problem(await admin.get("/v1/runs", params={"limit": 0}), 422, "validation-error")


async def test_idempotency_key(admin: httpx.AsyncClient, workflows: list[str]) -> None:
    key = "idem-" + uuid.uuid4().hex
    body = {"workflow": "bench-three", "inputs": {"topic": "once"}}
    first = await admin.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    second = await admin.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["run_id"] == second.json()["run_id"]
    assert first.json()["created"] is True and second.json()["created"] is False
    assert second.headers["idempotent-replayed"] == "true"
    other = await admin.post(
        "/v1/runs", json={**body, "inputs": {"topic": "twice"}}, headers={"Idempotency-Key": key}
    )
    problem(other, 409, "idempotency-key-reused")
    # Concurrent duplicates: one run.
    racing = await asyncio.gather(
        *[
            admin.post("/v1/runs", json=body, headers={"Idempotency-Key": key + "-race"})
            for _ in range(5)
        ]
    )
    assert {r.json()["run_id"] for r in racing} == {racing[0].json()["run_id"]}


async def test_approve_and_reject(stack: Stack, keys: dict[str, str], workflows: list[str]) -> None:
    async with client(stack.gateway, keys["operator"]) as http:
        me = (await http.get("/v1/me")).json()
        run_id = await start(http, "needs-approval", goal="launch")
        await until_status(http, run_id, "waiting_approval")
        pending = (await http.get("/v1/approvals")).json()["approvals"]
        assert any(a["run_id"] == run_id and a["node_id"] == "sign_off" for a in pending)
        # A waiting run's view holds still: same ETag, and 304 for a client that has it.
        waiting = await http.get(f"/v1/runs/{run_id}")
        etag = waiting.headers["etag"]
        assert (await http.get(f"/v1/runs/{run_id}")).headers["etag"] == etag
        unchanged = await http.get(f"/v1/runs/{run_id}", headers={"If-None-Match": etag})
        assert unchanged.status_code == 304
        decided = await http.post(
            f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True, "comment": "ship it ✓"}
        )
        assert decided.status_code == 200, decided.text
        assert decided.json()["approved"] is True
        events = await collect(http, f"/v1/runs/{run_id}/events")
        decision = next(e for e in events if e.event == "run.approval.decided")
        assert (
            decision.data["actor"]["id"] == me["id"]
            and decision.data["payload"]["comment"] == "ship it ✓"
        )
        assert events[-1].event == "run.completed"
        # The same client polling with its ETag sees the change, not its old copy.
        done = await until_status(http, run_id, "succeeded")
        assert done["approvals"][0]["approved"] is True
        moved = await http.get(f"/v1/runs/{run_id}", headers={"If-None-Match": etag})
        assert moved.status_code == 200 and moved.headers["etag"] != etag
        # Deciding again: the run no longer waits.
        again = await http.post(f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True})
        assert again.status_code in (404, 409), again.text

        rejected = await start(http, "needs-approval", goal="rollback")
        await until_status(http, rejected, "waiting_approval")
        response = await http.post(
            f"/v1/runs/{rejected}/approvals/sign_off", json={"approve": False}
        )
        assert response.status_code == 200 and response.json()["approved"] is False


async def test_cancel(stack: Stack, keys: dict[str, str], workflows: list[str]) -> None:
    async with client(stack.gateway, keys["operator"]) as http:
        run_id = await start(http, "needs-approval", goal="cancel me")
        await until_status(http, run_id, "waiting_approval")
        response = await http.post(f"/v1/runs/{run_id}/cancel", json={"reason": "changed my mind"})
        assert response.status_code == 202, response.text
        assert response.json()["cancel_requested"] is True
        events = await collect(http, f"/v1/runs/{run_id}/events")
        assert events[-1].event == "run.cancelled"
        cancel = next(e for e in events if e.event in ("run.cancel_requested", "run.cancelled"))
        assert cancel.data["actor"]["kind"] == "api_key"
        # No body at all is fine too (on an ended run: a conflict, not a 500).
        ended = await http.post(f"/v1/runs/{run_id}/cancel")
        assert ended.status_code in (202, 409), ended.text
        problem(await http.post(f"/v1/runs/{RUN}/cancel"), 404, "not-found")


# -- keys -------------------------------------------------------------------------------


async def test_keys_lifecycle_and_revocation_on_every_replica(
    stack: Stack, start_gateway: Any
) -> None:
    second = await start_gateway(1)
    async with client(stack.gateway, ADMIN_KEY) as admin:
        created = await admin.post("/v1/keys", json={"name": "ci-bot", "role": "operator"})
        assert created.status_code == 201
        assert created.headers["cache-control"] == "no-store"
        body = created.json()
        token, key_id = body["key"], body["id"]
        assert token.startswith("chf_") and len(token) >= 40 and body["prefix"] == token[:10]
        listed = (await admin.get("/v1/keys")).json()["keys"]
        shown = next(k for k in listed if k["id"] == key_id)
        assert "key" not in shown and shown["active"] is True
        assert token not in (await admin.get("/v1/keys")).text

        gateways = [stack.gateway, second]

        async def works_everywhere() -> bool:
            results = []
            for gw in gateways:
                async with client(gw, token) as http:
                    results.append((await http.get("/v1/me")).status_code)
            return results == [200, 200]

        await eventually(works_everywhere, timeout=5, message="new key works on both replicas")

        revoked = await admin.post(f"/v1/keys/{key_id}/revoke", json={"reason": "leaked"})
        assert revoked.status_code == 200 and revoked.json()["active"] is False
        revoked_at = asyncio.get_running_loop().time()

        async def refused_everywhere() -> bool:
            results = []
            for gw in gateways:
                async with client(gw, token) as http:
                    response = await http.get("/v1/me")
                    results.append((response.status_code, response.json().get("detail")))
            return all(r == (401, "this API key was revoked") for r in results)

        await eventually(
            refused_everywhere,
            timeout=1.0,
            interval=0.02,
            message="revoked within 1 s on both replicas",
        )
        assert asyncio.get_running_loop().time() - revoked_at < 1.0
        problem(await admin.post(f"/v1/keys/{key_id}/revoke"), 409, "conflict")
        problem(await admin.post("/v1/keys/bootstrap/revoke"), 409, "conflict")
        problem(await admin.get("/v1/keys/../../etc/passwd"), 404, "not-found")


async def test_keys_survive_a_restart(stack: Stack, start_gateway: Any) -> None:
    """A fresh replica loads keys from the read model and the stream."""
    async with client(stack.gateway, ADMIN_KEY) as admin:
        token = (await admin.post("/v1/keys", json={"name": "durable", "role": "viewer"})).json()[
            "key"
        ]
    fresh = await start_gateway(2)
    async with client(fresh, token) as http:
        response = await http.get("/v1/me")
        assert response.status_code == 200, (response.text, fresh.tail())
        assert response.json()["role"] == "viewer"


async def test_expired_key_is_refused(admin: httpx.AsyncClient, stack: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    token = (
        await admin.post("/v1/keys", json={"name": "short", "role": "viewer", "expires_at": soon})
    ).json()["key"]
    async with client(stack.gateway, token) as http:

        async def refused() -> bool:
            response = await http.get("/v1/me")
            return (
                response.status_code == 401
                and response.json()["detail"] == "this API key has expired"
            )

        await eventually(refused, timeout=5, message="expired key refused")


# -- limits -----------------------------------------------------------------------------


async def test_rate_limit_per_key(stack: Stack, start_gateway: Any) -> None:
    limited = await start_gateway(
        3, env={"CHIFFON_RATE_LIMIT_PER_SECOND": "5", "CHIFFON_RATE_LIMIT_BURST": "5"}
    )
    async with client(limited, ADMIN_KEY) as http:
        statuses = [(await http.get("/v1/me")) for _ in range(8)]
        codes = [r.status_code for r in statuses]
        assert codes[:5] == [200] * 5 and 429 in codes[5:], codes
        limited_response = next(r for r in statuses if r.status_code == 429)
        body = problem(limited_response, 429, "rate-limited")
        assert int(limited_response.headers["retry-after"]) >= 1 and body["retry_after"] >= 1
    # Another key has its own bucket.
    async with client(stack.gateway, ADMIN_KEY) as admin:
        token = (await admin.post("/v1/keys", json={"name": "other", "role": "viewer"})).json()[
            "key"
        ]
    async with client(limited, token) as other:

        async def known() -> bool:
            return (await other.get("/v1/me")).status_code == 200

        await eventually(known, timeout=5)


async def test_body_limit(admin: httpx.AsyncClient) -> None:
    huge = b"x" * (2 * 1024 * 1024)
    body = problem(
        await admin.post(
            "/v1/workflows", content=huge, headers={"Content-Type": "application/yaml"}
        ),
        413,
        "payload-too-large",
    )
    assert "limit" in body["detail"]

    async def chunks():  # no Content-Length: counted while read
        for _ in range(40):
            yield b"y" * 65536

    problem(
        await admin.post(
            "/v1/runs", content=chunks(), headers={"Content-Type": "application/json"}
        ),
        413,
        "payload-too-large",
    )
    # Under the HTTP limit, over what one command may carry: still a clear 413.
    big_inputs = {"workflow": "bench-three", "inputs": {"topic": "z" * 1_100_000}}
    response = await admin.post("/v1/runs", json=big_inputs)
    assert response.status_code == 413, response.text


@pytest.mark.parametrize("path", ["/", "/runs/x", "/workflows"])
async def test_dashboard_pages_redirect_to_login(stack: Stack, path: str) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        response = await http.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
