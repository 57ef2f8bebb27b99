"""No input and no model answer can stop a projection (issue 16), end to end: a real
executor, gateway and OpenAI-compatible server, driven with an operator's API key.

Every hostile form a user can send (a NUL escape in a ``set`` expression, a lone surrogate
escape, a NUL 70 levels deep in a run input, a lone surrogate key) is a 422 naming where it
is, and nothing is stored. A model answer holding a NUL and a lone surrogate is recorded
with U+FFFD instead, the replaced paths noted; the read models then stand at the stream's
end: the run is shown with its cleaned output, a later run is projected too, every service
is ready and ``chiffon projections rebuild`` replays the stream without a stop."""

from __future__ import annotations

import json
from typing import Any

import httpx

from chiffon.cli.http_client import GatewayClient
from tests.integration.gateway.support import ADMIN_KEY, Service
from tests.support.cli import run_cli
from tests.support.fixtures import eventually

from .conftest import Spawn, client_for, key_of, llm_env
from .helpers import events_until, of_type, run_view
from .openai_server import FakeOpenAI

PROBLEM = "application/problem+json"
NUL = "a string constant contains a NUL character"
SURROGATE = "a string constant contains a lone surrogate (U+D800)"

# Each escape as the document's text holds it: the text itself has no NUL or surrogate.
HOSTILE_SETS = [
    (r'"\N{NULL}"', NUL),
    (r"'\x00'", NUL),
    (r"'\0'", NUL),
    (r"'\U00000000'", NUL),
    (r"'ok' + '\ud800'", SURROGATE),
]

ANSWERS = """
name: hostile-answer
version: 1
inputs: {topic: {type: string}, extra: {type: object, default: null}}
defaults: {model: openai/main, retry: {attempts: 1}}
nodes:
  - {id: ask, type: llm, prompt: "about {topic}"}
  - {id: tag, type: set, values: {tagged: "ask + '|'"}}
edges:
  - {from: ask, to: tag}
"""
HOSTILE_ANSWER = "Paris\x00 is \ud800here"
CLEANED = "Paris\ufffd is \ufffdhere"


def set_workflow(index: int, expression: str) -> str:
    # YAML single quotes keep every backslash as written: the expression's own escape.
    quoted = expression.replace("'", "''")
    return (
        f"name: hostile-set-{index}\nversion: 1\nnodes:\n"
        f"  - {{id: a, type: set, values: {{v: '{quoted}'}}}}\n"
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def refused(response: httpx.Response) -> list[dict[str, Any]]:
    """The problem's listed errors, once the response is a 422 problem+json."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == 422 and body["title"], body
    errors: list[dict[str, Any]] = body.get("errors") or []
    return errors


async def send_hostile_forms(admin: httpx.AsyncClient, http: httpx.AsyncClient) -> None:
    """Workflows need the admin's key; runs only an operator's."""
    for index, (expression, reason) in enumerate(HOSTILE_SETS):
        response = await admin.post(
            "/v1/workflows",
            content=set_workflow(index, expression).encode(),
            headers={"Content-Type": "application/yaml"},
        )
        errors = refused(response)
        assert [(e["path"], e["line"]) for e in errors] == [("nodes[0].values.v", 4)], errors
        assert reason in errors[0]["message"], (expression, errors)

    deep_nul = json.dumps({"topic": "owls", "extra": nested(70, "a\x00b")})
    surrogate_key = '{"topic": "owls", "extra": {"ok": {"\\udfff": 1}}}'  # JSON-escaped
    for inputs, where in ((deep_nul, "inputs.extra" + ".k" * 70), (surrogate_key, "inputs.extra")):
        response = await http.post(
            "/v1/runs",
            content=f'{{"workflow": "hostile-answer", "inputs": {inputs}}}'.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert where in response.text, response.text
        refused(response)

    # Text that merely holds a backslash and a zero (here the constant '\\0') has no NUL.
    legal = (
        "name: backslash-zero\nversion: 1\nnodes:\n"
        + r"  - {id: a, type: set, values: {v: '''\\0'''}}"
    )
    registered = await admin.post(
        "/v1/workflows", content=legal.encode(), headers={"Content-Type": "application/yaml"}
    )
    assert registered.status_code == 201, registered.text

    async def names() -> list[str] | None:
        found = sorted(w["name"] for w in (await http.get("/v1/workflows")).json()["workflows"])
        return found if "backslash-zero" in found else None

    # Projected in order: once the last one shows, a refused one would show too.
    listed = await eventually(names, timeout=15, message="the legal workflow projected")
    assert listed == ["backslash-zero", "hostile-answer"]


async def test_hostile_forms_are_refused_and_a_hostile_answer_leaves_the_read_models_at_the_end(
    spawn_executor: Spawn,
    gateway: Service,
    client: GatewayClient,
    openai_server: FakeOpenAI,
    service_env: dict[str, str],
) -> None:
    def script(model: str, messages: list[dict[str, Any]], schema: Any) -> str | None:
        return HOSTILE_ANSWER if messages[-1]["content"] == "about hostile" else None

    openai_server.script = script
    executor = await spawn_executor(1, env=llm_env(openai_server))
    operator, _ = await key_of(client, "operator-hostile")  # runs need no more
    await client.register_workflow(ANSWERS)

    async with (
        httpx.AsyncClient(base_url=gateway.url, headers=bearer(ADMIN_KEY), timeout=30) as admin,
        httpx.AsyncClient(base_url=gateway.url, headers=bearer(operator), timeout=30) as http,
        client_for(gateway, operator) as user,
    ):
        await send_hostile_forms(admin, http)

        # A model answer holding a NUL and a lone surrogate: recorded replaced, noted.
        hostile = (await user.start_run("hostile-answer", inputs={"topic": "hostile"}))["run_id"]
        events = await events_until(user, hostile)
        assert events[-1].type == "run.completed", [e.type for e in events]
        completed = of_type(events, "run.node.completed")
        assert [(c["node_id"], c["outputs"], c["replaced"]) for c in completed] == [
            ("ask", {"ask": CLEANED}, ["/ask"]),
            ("tag", {"tagged": CLEANED + "|"}, []),
        ]

        # The read models are at the stream's end: this run, and one started after it.
        run = await run_view(user, hostile, "succeeded")
        assert run.outputs is not None
        assert (run.outputs["ask"], run.outputs["tagged"]) == (CLEANED, CLEANED + "|")
        assert [(n.node_id, n.status) for n in run.nodes] == [
            ("ask", "succeeded"),
            ("tag", "succeeded"),
        ]
        assert run.position == events[-1].seq
        calm = (await user.start_run("hostile-answer", inputs={"topic": "calm"}))["run_id"]
        calm_events = await events_until(user, calm)
        later = await run_view(user, calm, "succeeded")
        assert later.outputs is not None and later.outputs["ask"] == "echo: about calm"
        assert later.position == calm_events[-1].seq
        runs, _ = await user.list_runs(limit=50)
        assert sorted(r.run_id for r in runs) == sorted([hostile, calm])  # none refused stored

        for ready in (f"http://127.0.0.1:{executor.port}/readyz", f"{gateway.url}/readyz"):
            assert (await http.get(ready)).status_code == 200, ready

        code, out, err = await run_cli(
            service_env, "projections", "rebuild", "readmodels.runs", "--workers", "1"
        )
        assert code == 0, err
        assert out.startswith("rebuilt readmodels.runs: "), out
        rebuilt = await run_view(user, hostile, "succeeded")
        assert rebuilt.outputs == run.outputs
