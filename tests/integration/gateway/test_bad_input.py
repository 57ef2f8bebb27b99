"""Bad input never makes a 500: malformed bodies, wrong content types, huge bodies,
unicode and control characters, unknown and hostile ids, odd methods."""

from __future__ import annotations

import httpx
import pytest

from .test_api import problem

HOSTILE_IDS = [
    "' OR 1=1 --",
    "1; DROP TABLE runs;",
    "../../etc/passwd",
    "..%2F..%2Fsecret",
    "%00",
    "a.b.c",
    "*",
    ">",
    "run id with spaces",
    "ünïcødé-ид-🙂",
    "x" * 1000,
    "\u202e\u0000",
]


async def test_malformed_json(admin: httpx.AsyncClient, workflows: list[str]) -> None:
    for body in [
        b"{",
        b"{'workflow': 1}",
        b"[1, 2",
        b"\xff\xfe\x00",
        b"null",
        b"[]",
        b'"text"',
        b'{"workflow": "bench-three",}',
    ]:
        response = await admin.post(
            "/v1/runs", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (400, 422), (body, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    body = problem(
        await admin.post("/v1/runs", content=b"{", headers={"Content-Type": "application/json"}),
        400,
        "malformed-body",
    )
    assert "JSON" in body["detail"]


async def test_validation_errors_name_each_field(admin: httpx.AsyncClient) -> None:
    body = problem(
        await admin.post("/v1/runs", json={"workflow": "", "version": 0, "inputs": [], "extra": 1}),
        422,
        "validation-error",
    )
    paths = {e["path"] for e in body["errors"]}
    assert {"body.workflow", "body.version", "body.inputs", "body.extra"} <= paths


async def test_wrong_content_type(admin: httpx.AsyncClient) -> None:
    problem(
        await admin.post(
            "/v1/runs",
            content=b"workflow=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        415,
        "unsupported-media-type",
    )
    problem(
        await admin.post(
            "/v1/runs", content=b'{"workflow": "x"}', headers={"Content-Type": "text/plain"}
        ),
        415,
        "unsupported-media-type",
    )
    problem(
        await admin.post(
            "/v1/workflows", content=b"name: x", headers={"Content-Type": "text/html"}
        ),
        415,
        "unsupported-media-type",
    )
    problem(await admin.post("/v1/workflows", content=b"name: x"), 415, "unsupported-media-type")
    problem(
        await admin.post(
            "/v1/keys",
            content=b"name=x",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        ),
        415,
        "unsupported-media-type",
    )


async def test_malformed_yaml(admin: httpx.AsyncClient) -> None:
    for source in [
        "name: [unclosed",
        "\t- tabs: {",
        "a: b: c",
        "---\n- just\n- a list\n",
        "",
        "\x00\x01\x02",
        "name: x\nversion: 1\n" * 3,
    ]:
        response = await admin.post(
            "/v1/workflows", content=source.encode(), headers={"Content-Type": "application/yaml"}
        )
        assert response.status_code in (400, 422), (source, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    body = problem(
        await admin.post(
            "/v1/workflows",
            content=b"name: [unclosed\n",
            headers={"Content-Type": "application/yaml"},
        ),
        422,
        "validation-error",
    )
    assert body["errors"] and body["errors"][0]["line"]
    problem(
        await admin.post(
            "/v1/workflows",
            content=b"\xff\xfe bad utf-8",
            headers={"Content-Type": "application/yaml"},
        ),
        400,
        "bad-request",
    )


async def test_unicode_and_control_characters(
    admin: httpx.AsyncClient, workflows: list[str]
) -> None:
    weird = "名前 🙂 \u202e\u0007 \ud7ff \t\r\n ' \" ; -- \\ %00 <script>alert(1)</script>"
    response = await admin.post(
        "/v1/runs", json={"workflow": "bench-three", "inputs": {"topic": weird}}
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    got = await admin.get(f"/v1/runs/{run_id}")
    assert got.status_code in (200, 503)
    response = await admin.post("/v1/runs", json={"workflow": "名前\u0000", "inputs": {}})
    assert response.status_code in (404, 422), response.text
    # NUL is valid JSON but PostgreSQL cannot store it: refused before it becomes an event.
    problem(
        await admin.post("/v1/keys", json={"name": "\u0000\u202e🙂", "role": "viewer"}),
        422,
        "validation-error",
    )
    problem(
        await admin.post(
            "/v1/runs", json={"workflow": "bench-three", "inputs": {"topic": {"k\u0000": ["a"]}}}
        ),
        422,
        "validation-error",
    )
    problem(await admin.get("/v1/runs", params={"workflow": "a\u0000"}), 422, "validation-error")
    problem(
        await admin.post(
            "/v1/workflows",
            content=b'{"name": "n\\u0000", "version": 1}',
            headers={"Content-Type": "application/json"},
        ),
        422,
        "validation-error",
    )
    response = await admin.post(
        "/v1/runs",
        json={"workflow": "bench-three", "inputs": {"topic": "x"}},
        headers={"Idempotency-Key": "has space"},
    )
    problem(response, 422, "validation-error")


async def test_unknown_workflow_and_run(admin: httpx.AsyncClient) -> None:
    problem(
        await admin.post("/v1/runs", json={"workflow": "no-such-flow", "inputs": {}}),
        404,
        "not-found",
    )
    problem(await admin.get("/v1/workflows/no-such-flow"), 404, "not-found")
    problem(await admin.get("/v1/runs/00000000-0000-7000-8000-000000000000"), 404, "not-found")


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
async def test_hostile_ids(admin: httpx.AsyncClient, hostile: str) -> None:
    from urllib.parse import quote

    token = quote(hostile, safe="")
    for method, path, body in [
        ("GET", f"/v1/runs/{token}", None),
        ("GET", f"/v1/runs/{token}/events", None),
        ("POST", f"/v1/runs/{token}/cancel", {}),
        ("POST", f"/v1/runs/{token}/approvals/{token}", {"approve": True}),
        ("GET", f"/v1/workflows/{token}", None),
        ("GET", f"/v1/keys/{token}", None),
        ("POST", f"/v1/keys/{token}/revoke", {}),
        ("GET", f"/v1/runs?workflow={token}&status=running", None),
    ]:
        response = await admin.request(method, path, json=body)
        assert response.status_code in (200, 404, 405, 422), (
            method,
            path,
            response.status_code,
            response.text,
        )
        if response.status_code != 200:
            assert response.headers["content-type"].startswith("application/problem+json"), (
                method,
                path,
            )


async def test_unknown_routes_and_methods(admin: httpx.AsyncClient) -> None:
    problem(await admin.get("/v1/nothing-here"), 404, "not-found")
    response = await admin.delete("/v1/runs")
    problem(response, 405, "method-not-allowed")
    assert "allow" in response.headers
    problem(await admin.put("/v1/workflows/x"), 405, "method-not-allowed")
