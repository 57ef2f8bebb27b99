"""Poison input: clear errors, nothing registered, and the executor keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest

from chiffon.cli.client import InvalidRequest
from chiffon.cli.http_client import GatewayClient
from chiffon.commands import CommandReply

from .helpers import events_until

BASE = """
name: {name}
version: 1
defaults: {{model: chiffon/echo}}
nodes:
{nodes}
edges:
{edges}
"""


def spec(name: str, nodes: str, edges: str = "  []") -> str:
    return BASE.format(name=name, nodes=nodes, edges=edges)


CASES = {
    "cycle-no-exit": (
        spec(
            "cycle-no-exit",
            "  - {id: start, type: set, values: {x: '1'}}\n  - {id: a, type: llm, prompt: a}\n  - {id: b, type: llm, prompt: b}",
            "  - {from: start, to: a}\n  - {from: a, to: b}\n  - {from: b, to: a}",
        ),
        "never stops",
    ),
    "unknown-type": (
        spec("unknown-type", "  - {id: a, type: shell, command: ls}"),
        "unknown node type 'shell'",
    ),
    "call-in-condition": (
        spec(
            "call-in-condition",
            "  - {id: a, type: llm, prompt: a, output: {xs: 'list[string]'}}\n  - {id: b, type: llm, prompt: b}",
            "  - {from: a, to: b, when: 'len(xs) > 1'}",
        ),
        "function calls are not allowed",
    ),
    "huge-prompt": (
        spec("huge-prompt", "  - {id: a, type: llm, prompt: '" + "x" * 200_000 + "'}"),
        "string is too long",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_bad_spec_is_refused_with_every_issue(
    shared_client: GatewayClient, case: str
) -> None:
    source, expected = CASES[case]
    with pytest.raises(InvalidRequest) as refused:
        await shared_client.register_workflow(source)
    details = refused.value.details
    assert any(expected in d["message"] for d in details), details
    assert all(d["path"] is not None and "message" in d for d in details)
    assert case not in [w.name for w in await shared_client.list_workflows()]


async def test_oversized_and_undecodable_requests_are_refused_and_the_executor_keeps_serving(
    shared_client: GatewayClient, shared_env: dict[str, str], examples: Path
) -> None:
    five_mb = spec("five-mb", "  - {id: a, type: llm, prompt: '" + "y" * (5 * 1024 * 1024) + "'}")
    # Refused at the gateway, before any service reads it, saying by how much.
    with pytest.raises(InvalidRequest, match=r"the body is \d+ bytes; the limit is \d+ bytes"):
        await shared_client.register_workflow(five_mb)

    namespace = shared_env["CHIFFON_NAMESPACE"]
    nc = await nats.connect(shared_env["CHIFFON_NATS_URL"])
    try:
        subject = f"{namespace}.cmd.executor.register_workflow"
        actor = b'{"kind":"user","id":"mallory"}'
        invalid_utf8 = b'{"actor":' + actor + b',"source":"name: \xff\xfe bad"}'
        reply = CommandReply.model_validate_json(
            (await nc.request(subject, invalid_utf8, timeout=10)).data
        )
        assert not reply.ok and reply.refusal is not None and reply.refusal.code == "invalid"
        not_json = await nc.request(subject, b"\x00\x01 not json", timeout=10)
        assert CommandReply.model_validate_json(not_json.data).refusal.code == "invalid"  # type: ignore[union-attr]
        garbage = json.dumps(
            {"actor": {"kind": "user", "id": "m"}, "source": "- [unclosed"}
        ).encode()
        reply = CommandReply.model_validate_json(
            (await nc.request(subject, garbage, timeout=10)).data
        )
        assert (
            reply.refusal is not None
            and reply.refusal.code == "invalid"
            and reply.refusal.details[0]["line"] == 1
        )
    finally:
        await nc.close()

    names = [w.name for w in await shared_client.list_workflows()]
    assert "five-mb" not in names
    # Still serving: a good workflow registers and runs.
    # (A name of its own: the modules sharing this stack register the examples as theirs.)
    source = (examples / "linear.yaml").read_text().replace("linear-brief", "after-poison")
    await shared_client.register_workflow(source)
    run_id = (await shared_client.start_run("after-poison", inputs={"topic": "after poison"}))[
        "run_id"
    ]
    assert (await events_until(shared_client, run_id))[-1].type == "run.completed"
