"""One run is one trace, across real processes: the gateway, an executor and an agent
export their spans over OTLP/HTTP (``OTEL_EXPORTER_OTLP_ENDPOINT``) to a real receiver
started here, as they would to a collector or Jaeger.

The run waits on an approval between its model call and its agent task, so it is
executed twice (suspended, then resumed by the decision): both run spans belong to the
run's trace, and the resumed one links to the request that decided the approval and to
the first execution's span."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chiffon.agentproto.auth import generate_keypair
from chiffon.devstack.ports import free_port
from chiffon.eventstore import JetStreamEventStore
from tests.integration.executor.test_agents_failover import (
    Agent,
    register,
    start_agent,
    wait_serving,
)
from tests.integration.gateway.support import (
    ADMIN_KEY,
    gateway_env,
    start_service,
    stop_all,
    wait_ready,
)
from tests.support.fixtures import eventually

from .receiver import ReceivedSpan, Receiver

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
STATUS_ERROR = 2

WORKFLOW = """
name: traced
version: 1
inputs: {topic: {type: string}}
defaults: {model: chiffon/echo}
nodes:
  - {id: draft, type: llm, prompt: "facts about {topic}", output: {facts: string}}
  - {id: sign_off, type: approval, message: "Run it?"}
  - {id: shell, type: agent, requires: [shell], task: {tool: shell, command: "echo traced"}}
edges:
  - {from: draft, to: sign_off}
  - {from: sign_off, to: shell}
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver().serving() as running:
        yield running


@pytest.fixture
def otlp_env(receiver: Receiver) -> dict[str, str]:
    """Export to the receiver, in batches sent every 100 ms rather than every 5 s."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture
def agent(tmp_path: Path, otlp_env: dict[str, str]) -> Iterator[tuple[Agent, Path]]:
    private, public = generate_keypair()
    signing, key_file = tmp_path / "executor-signing.pem", tmp_path / "executor.pub"
    signing.write_bytes(private)
    signing.chmod(0o600)
    key_file.write_bytes(public)
    # Not waited for here: it starts while the executor and the gateway start.
    running = start_agent(f"traced-{uuid.uuid4().hex[:6]}", key_file, tmp_path, **otlp_env)
    try:
        yield running, signing
    finally:
        running.stop()


def one(spans: list[ReceivedSpan], what: str, **match: object) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if all(getattr(s, k, s.attributes.get(k.replace("__", "."))) == v for k, v in match.items())
    ]
    assert len(found) == 1, f"{what}: expected one span, found {len(found)}: {found}"
    return found[0]


async def test_a_run_is_one_trace_from_the_gateway_request_to_the_agent(
    service_env: dict[str, str],
    store: JetStreamEventStore,
    receiver: Receiver,
    otlp_env: dict[str, str],
    agent: tuple[Agent, Path],
    tmp_path: Path,
) -> None:
    running_agent, signing = agent
    env = {**service_env, **otlp_env, "CHIFFON_LOG_LEVEL": "warning"}
    executor = start_service(
        "chiffon.executor",
        "executor-1",
        {**env, "CHIFFON_REPLICA": "1", "CHIFFON_AGENT_SIGNING_KEY_FILE": str(signing)},
        tmp_path,
        free_port(),
    )
    gateway = start_service("chiffon.gateway", "gateway", gateway_env(env), tmp_path, free_port())
    try:
        wait_serving(running_agent)
        await register(store, running_agent)
        await wait_ready(executor)
        await wait_ready(gateway)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=gateway.url, headers=headers, timeout=30) as http:
            registered = await http.post(
                "/v1/workflows", content=WORKFLOW, headers={"Content-Type": "application/yaml"}
            )
            assert registered.status_code in (200, 201), registered.text
            started = await http.post(
                "/v1/runs", json={"workflow": "traced", "inputs": {"topic": "spans"}}
            )
            assert started.status_code in (200, 201, 202), started.text
            run_id = started.json()["run_id"]

            async def waiting() -> bool:
                body = (await http.get("/v1/approvals")).json()
                return any(a["run_id"] == run_id for a in body["approvals"])

            await eventually(waiting, timeout=30, message="the run waits on its approval")
            decided = await http.post(
                f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True}
            )
            assert decided.status_code == 200, decided.text

            async def ended() -> str | None:
                status = (await http.get(f"/v1/runs/{run_id}")).json()["status"]
                return status if status in ("succeeded", "failed", "cancelled") else None

            assert await eventually(ended, timeout=30, message="the run ends") == "succeeded"

        def complete(spans: list[ReceivedSpan]) -> bool:
            runs = [s for s in spans if s.name == "run traced"]
            return len(runs) == 2 and any(s.service == "chiffon-agent" for s in spans)

        spans = receiver.wait_for(complete, timeout=20, what="the run's spans")
    finally:
        stop_all([gateway, executor])
    request = one(spans, "the start request", kind=SERVER, url__path="/v1/runs")
    trace = [s for s in spans if s.trace_id == request.trace_id]
    by_id = {s.span_id: s for s in trace}

    def parent(span: ReceivedSpan) -> ReceivedSpan:
        assert span.parent_span_id in by_id, f"{span.name}: its parent is not in the run's trace"
        return by_id[span.parent_span_id]

    # gateway request -> command (sent by the gateway, handled by the executor) -> run
    sent = one(trace, "the start command sent", name="command start_run", kind=CLIENT)
    handled = one(trace, "the start command handled", name="command start_run", kind=SERVER)
    assert parent(sent) is request and sent.service == "chiffon-gateway"
    assert parent(handled) is sent and handled.service == "chiffon-executor"
    first, resumed = sorted(
        (s for s in trace if s.name == "run traced"), key=lambda s: s.attributes["chiffon.resumed"]
    )
    assert parent(first) is handled and first.attributes["chiffon.run_id"] == run_id
    assert first.attributes["chiffon.outcome"] == "suspended"
    assert resumed.attributes["chiffon.outcome"] == "succeeded"

    # Resumed by the decision: in the run's trace, linked to the request that decided.
    decision = one(
        spans,
        "the decision request",
        kind=SERVER,
        url__path=f"/v1/runs/{run_id}/approvals/sign_off",
    )
    assert decision.trace_id != request.trace_id
    assert parent(resumed) is handled
    assert any(trace_id == decision.trace_id for trace_id, _ in resumed.links)
    # ... and to the execution before it.
    assert (first.trace_id, first.span_id) in resumed.links

    # run -> node attempts -> the model call (GenAI conventions)
    draft = one(trace, "the llm node's attempt", name="node draft")
    assert parent(draft) is first
    assert (
        draft.attributes["chiffon.attempt"] == 1 and draft.attributes["chiffon.node_type"] == "llm"
    )
    sign_offs = [s for s in trace if s.name == "node sign_off"]
    assert sorted(parent(s).attributes["chiffon.resumed"] for s in sign_offs) == [False, True]
    chat = one(trace, "the model call", name="chat chiffon/echo")
    assert parent(chat) is draft and chat.kind == CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "chiffon/echo"
    assert chat.attributes["gen_ai.system"] == "chiffon"
    assert int(str(chat.attributes["gen_ai.usage.input_tokens"])) > 0
    assert int(str(chat.attributes["gen_ai.usage.output_tokens"])) > 0

    # run -> agent node attempt -> agent task (gRPC client) -> the agent's server span
    shell = one(trace, "the agent node's attempt", name="node shell")
    assert parent(shell) is resumed
    task = one(trace, "the agent task sent", name="agent task shell", kind=CLIENT)
    assert parent(task) is shell and task.attributes["chiffon.agent_id"] == running_agent.agent_id
    served = one(trace, "the agent's own span", name="agent task shell", kind=SERVER)
    assert served.service == "chiffon-agent" and parent(served) is task
    assert served.attributes["chiffon.ok"] is True
    assert all(s.status_code != STATUS_ERROR for s in trace)
