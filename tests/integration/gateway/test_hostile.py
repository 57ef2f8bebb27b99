"""Hostile requests from issue 16, through the real gateway: ids with characters no id can
have, Last-Event-ID values that are no stream sequence, 405 without Allow, control
characters in key names, and a revoked key's open event stream."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.support.cli import run_cli
from tests.support.fixtures import eventually

from .conftest import StartGateway, client
from .support import ENDINGS, Service, SseEvent, sse_events
from .test_api import problem, start

# Each holds a character no run id, node id or key id can have; the patterns end in ``$``,
# which also matches before a trailing newline, so ``x\n`` used to reach the command model.
CONTROL_IDS = ["x%0A", "x%0D", "x%0D%0A", "x%07", "x%00", "x%1B", "x%7F", "%0A", "x%C2%85"]


async def test_ids_with_control_characters_are_404(admin: httpx.AsyncClient) -> None:
    for raw in CONTROL_IDS:
        for method, path, body in [
            ("POST", f"/v1/runs/{raw}/cancel", None),
            ("POST", f"/v1/runs/{raw}/approvals/review", {"approve": True}),
            ("POST", f"/v1/runs/abc/approvals/{raw}", {"approve": True}),
            ("GET", f"/v1/runs/{raw}", None),
            ("GET", f"/v1/runs/{raw}/events", None),
            ("GET", f"/v1/keys/{raw}", None),
            ("POST", f"/v1/keys/{raw}/revoke", None),
        ]:
            response = await admin.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            problem(response, 404, "not-found")


@pytest.mark.parametrize(
    "value", ["99999999999999999999999999999999", "9223372036854775808", "-1", "abc", "+5", "1_0"]
)
async def test_last_event_id_that_is_no_sequence_is_400(
    admin: httpx.AsyncClient, workflows: list[str], value: str
) -> None:
    run_id = await start(admin)
    response = await admin.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": value})
    body = problem(response, 400, "bad-request")
    assert "Last-Event-ID" in body["detail"]
    assert body["errors"][0]["path"] == "header.Last-Event-ID"


async def test_largest_last_event_id_gives_a_well_terminated_empty_stream(
    admin: httpx.AsyncClient, workflows: list[str]
) -> None:
    run_id = await start(admin)
    response = await admin.get(
        f"/v1/runs/{run_id}/events?follow=false",
        headers={"Last-Event-ID": str(2**63 - 1)},
    )
    assert response.status_code == 200, response.text
    assert "event: run." not in response.text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/runs", {"GET", "POST"}),
        ("PUT", "/v1/runs", {"GET", "POST"}),
        ("DELETE", "/v1/runs/abc/cancel", {"POST"}),
        ("GET", "/v1/runs/abc/cancel", {"POST"}),
        ("PUT", "/v1/workflows/x", None),
        ("DELETE", "/v1/keys", None),
        ("PATCH", "/v1/runs/abc/events", {"GET"}),
    ],
)
async def test_every_405_lists_the_methods(
    admin: httpx.AsyncClient, method: str, path: str, allowed: set[str] | None
) -> None:
    response = await admin.request(method, path)
    problem(response, 405, "method-not-allowed")
    listed = {m.strip() for m in response.headers["allow"].split(",") if m.strip()}
    assert listed, response.headers
    assert method not in listed
    if allowed is not None:
        assert allowed <= listed, listed


@pytest.mark.parametrize(
    "name", ["ci\r\nbot", "bot\n", "ring\x07", "nul\x00", "esc\x1b[2J", "nel\x85"]
)
async def test_key_names_with_control_characters_are_422(
    admin: httpx.AsyncClient, name: str
) -> None:
    body = problem(
        await admin.post("/v1/keys", json={"name": name, "role": "viewer"}),
        422,
        "validation-error",
    )
    assert [e["path"] for e in body["errors"]] == ["body.name"], body
    assert "control characters" in body["errors"][0]["message"]
    listed = (await admin.get("/v1/keys")).json()["keys"]
    assert name not in {k["name"] for k in listed}  # nothing stored


# A key stored before names were checked: the CLI must not print its name raw.
FORGED = "bot\r\n0000  admin-key    admin     chf_x\x07\x1b[2J\u202e"


@pytest.fixture
def stored_hostile_key() -> Iterator[str]:
    """A gateway stand-in that lists one key whose name holds control characters."""
    listing = json.dumps(
        {
            "keys": [
                {
                    "id": "0190a0a0-0000-7000-8000-000000000001",
                    "name": FORGED,
                    "role": "viewer",
                    "prefix": "chf_ab\x07",
                    "created_at": "2026-01-01T00:00:00Z",
                    "created_by": "admin",
                    "active": True,
                }
            ]
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(listing)))
            self.end_headers()
            self.wfile.write(listing)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_keys_list_escapes_control_characters(
    stored_hostile_key: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(CHIFFON_GATEWAY_URL=stored_hostile_key, CHIFFON_API_KEY="chf_test")
    code, out, err = await run_cli(env, "keys", "list", cwd=tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, lines  # the header and one row: no forged row
    for char in "\r\x07\x1b\u202e":
        assert char not in out
    assert lines[1].startswith("0190a0a0-0000-7000-8000-000000000001  bot\\r\\n"), lines[1]
    assert "chf_ab\\x07…" in lines[1]


async def test_a_revoked_keys_streams_end_within_a_second(
    admin: httpx.AsyncClient,
    workflows: list[str],
    gateway: Service,
    start_gateway: StartGateway,
) -> None:
    made = await admin.post("/v1/keys", json={"name": "sse-follower", "role": "viewer"})
    assert made.status_code == 201, made.text
    key_id, token = made.json()["id"], made.json()["key"]
    other = await start_gateway(replica=2)
    run_id = await start(admin, "needs-approval", goal="revoked follower")
    seen: dict[str, list[SseEvent]] = {"here": [], "there": []}
    ended: dict[str, float] = {}

    async def follow(where: str, http: httpx.AsyncClient) -> None:
        async with http:
            async for event in sse_events(http, f"/v1/runs/{run_id}/events"):
                seen[where].append(event)
        ended[where] = time.monotonic()

    tasks = [
        asyncio.create_task(follow("here", client(gateway, token))),
        asyncio.create_task(follow("there", client(other, token))),
    ]

    async def both_waiting() -> bool:
        return all(
            any(e.event == "run.approval.requested" for e in events) for events in seen.values()
        )

    await eventually(both_waiting, timeout=30, message="both followers at the approval")
    revoked = await admin.post(f"/v1/keys/{key_id}/revoke", json={"reason": "test"})
    assert revoked.status_code == 200, revoked.text
    at = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)  # the streams end by themselves
    for where in ("here", "there"):
        assert ended[where] - at < 1.0, (where, ended[where] - at)
        assert seen[where][-1].event not in ENDINGS  # it ended for the key, not the run
    async with client(gateway, token) as http:
        problem(await http.get(f"/v1/runs/{run_id}/events"), 401, "unauthorized")
    # The run itself is untouched: an admin still follows it to its end.
    await admin.post(f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True})


def _nested(depth: int, leaf: str) -> object:
    value: object = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    "inputs",
    [
        '{"topic": "\\ud800"}',  # a lone surrogate, JSON-escaped, as a value
        '{"topic": "owls", "\\udfff": 1}',  # ... as a key
        json.dumps({"topic": "owls", "deep": _nested(70, "a\x00b")}),  # NUL past 64 levels
    ],
    ids=["surrogate-value", "surrogate-key", "nul-70-deep"],
)
async def test_run_inputs_with_nul_or_lone_surrogates_are_refused(
    admin: httpx.AsyncClient, gateway: Service, workflows: list[str], inputs: str
) -> None:
    body = f'{{"workflow": "bench-three", "inputs": {inputs}}}'
    response = await admin.post(
        "/v1/runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    listed = (await admin.get("/v1/runs", params={"limit": 500})).json()["runs"]
    assert all("\x00" not in json.dumps(r) for r in listed)
    assert (await admin.get(f"{gateway.url}/readyz")).status_code == 200
