"""Every name a user writes, at its limit, runs and shows; one character more is refused
where it is written, with its path and line; and the gateway stays ready throughout.

The limits are the widths of the read models' columns (``chiffon.events.limits``): a
legal workflow can no longer stop the runs projection for everyone (a 120-character node
id once did, through ``run_nodes.node_id VARCHAR(100)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chiffon.events.limits import (
    COMMENT_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
)
from tests.support.cli import run_cli
from tests.support.fixtures import eventually

from .conftest import Stack
from .test_api import problem

YAML = {"Content-Type": "application/yaml"}

WORKFLOW = "limits-" + "w" * (WORKFLOW_NAME_MAX_CHARS - len("limits-"))
TOPIC = "i" * VARIABLE_NAME_MAX_CHARS
DRAFT = "n" * NODE_ID_MAX_CHARS
SIGN_OFF = "a" * NODE_ID_MAX_CHARS
TEXT = "o" * VARIABLE_NAME_MAX_CHARS
COUNT = "t" * VARIABLE_NAME_MAX_CHARS


def source(
    *,
    name: str = WORKFLOW,
    topic: str = TOPIC,
    draft: str = DRAFT,
    sign_off: str = SIGN_OFF,
    text: str = TEXT,
    count: str = COUNT,
) -> str:
    """Every kind of user-written name once, each on a known line."""
    return f"""\
name: {name}
version: 1
inputs:
  {topic}: {{type: string}}
defaults: {{model: chiffon/echo}}
nodes:
  - id: {draft}
    type: llm
    prompt: "Write about {{{topic}}}"
    output: {{{text}: string}}
  - id: {sign_off}
    type: approval
    message: "Ship it?"
  - id: tally
    type: set
    values:
      {count}: "1"
edges:
  - {{from: {draft}, to: {sign_off}}}
  - {{from: {sign_off}, to: tally}}
"""


async def ready(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200, response.text


async def run_view(admin: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await admin.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def test_every_name_at_its_limit_registers_runs_and_shows(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    registered = await admin.post("/v1/workflows", content=source(), headers=YAML)
    assert registered.status_code in (200, 201), registered.text
    assert registered.json()["name"] == WORKFLOW

    key = "k" * IDEMPOTENCY_KEY_MAX_CHARS
    started = await admin.post(
        "/v1/runs",
        json={"workflow": WORKFLOW, "inputs": {TOPIC: "owls"}},
        headers={"Idempotency-Key": key},
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]

    async def waiting() -> dict[str, Any] | None:
        view = await run_view(admin, run_id)
        return view if view["status"] == "waiting_approval" else None

    view = await eventually(waiting, timeout=60, message="the run waits for its approval")
    assert view is not None
    assert [n["node_id"] for n in view["nodes"]] == [DRAFT, SIGN_OFF]
    await ready(stack)

    comment = "c" * COMMENT_MAX_CHARS
    decided = await admin.post(
        f"/v1/runs/{run_id}/approvals/{SIGN_OFF}", json={"approve": True, "comment": comment}
    )
    assert decided.status_code == 200, decided.text

    async def succeeded() -> dict[str, Any] | None:
        view = await run_view(admin, run_id)
        assert view["status"] not in ("failed", "cancelled"), view
        return view if view["status"] == "succeeded" else None

    view = await eventually(succeeded, timeout=60, message="the run succeeds")
    assert view is not None
    assert view["workflow"] == WORKFLOW
    assert view["idempotency_key"] == key
    assert view["inputs"] == {TOPIC: "owls"}
    assert [(n["node_id"], n["status"]) for n in view["nodes"]] == [
        (DRAFT, "succeeded"),
        (SIGN_OFF, "succeeded"),
        ("tally", "succeeded"),
    ]
    (approval,) = view["approvals"]
    assert approval["node_id"] == SIGN_OFF
    assert approval["approved"] is True
    assert approval["comment"] == comment
    assert approval["decided_by"] == "api_key:bootstrap"
    assert TEXT in view["outputs"]
    assert view["outputs"][COUNT] == 1
    await ready(stack)


@pytest.mark.parametrize(
    ("name", "path", "line", "message"),
    [
        ("name", "name", 1, "name is too long (64 characters; the limit is 63)"),
        ("topic", "inputs.{}", 4, "name is too long (101 characters; the limit is 100)"),
        ("draft", "nodes[0].id", 7, "node id is too long (101 characters; the limit is 100)"),
        ("sign_off", "nodes[1].id", 11, "node id is too long (101 characters; the limit is 100)"),
        ("text", "nodes[0].output.{}", 10, "name is too long (101 characters; the limit is 100)"),
        ("count", "nodes[2].values.{}", 17, "name is too long (101 characters; the limit is 100)"),
    ],
)
async def test_one_character_more_is_refused_at_registration_with_its_path_and_line(
    stack: Stack,
    admin: httpx.AsyncClient,
    tmp_path: Path,
    name: str,
    path: str,
    line: int,
    message: str,
) -> None:
    limit = WORKFLOW_NAME_MAX_CHARS if name == "name" else NODE_ID_MAX_CHARS
    value = "x" * (limit + 1)
    too_long = source(**{name: value})

    body = problem(
        await admin.post("/v1/workflows", content=too_long, headers=YAML), 422, "validation-error"
    )
    expected = {"path": path.format(value), "line": line, "message": message}
    assert expected in body["errors"], body["errors"]

    file = tmp_path / "too-long.yaml"
    file.write_text(too_long)
    code, out, err = await run_cli(stack.env, "validate", str(file))
    assert code == 2, out + err
    assert f"{file}:{line}: {path.format(value)}: {message}" in err, err
    await ready(stack)


async def test_an_idempotency_key_or_a_comment_one_character_too_long_is_refused(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    registered = await admin.post("/v1/workflows", content=source(), headers=YAML)
    assert registered.status_code in (200, 201), registered.text

    body = problem(
        await admin.post(
            "/v1/runs",
            json={"workflow": WORKFLOW, "inputs": {TOPIC: "owls"}},
            headers={"Idempotency-Key": "k" * (IDEMPOTENCY_KEY_MAX_CHARS + 1)},
        ),
        422,
        "validation-error",
    )
    assert [e["path"] for e in body["errors"]] == ["header.Idempotency-Key"], body

    started = await admin.post("/v1/runs", json={"workflow": WORKFLOW, "inputs": {TOPIC: "owls"}})
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    body = problem(
        await admin.post(
            f"/v1/runs/{run_id}/approvals/{SIGN_OFF}",
            json={"approve": True, "comment": "c" * (COMMENT_MAX_CHARS + 1)},
        ),
        422,
        "validation-error",
    )
    assert [e["path"] for e in body["errors"]] == ["body.comment"], body
    await ready(stack)
