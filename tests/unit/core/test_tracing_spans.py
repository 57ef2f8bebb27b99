"""The spans of a run's trace, collected by an in-memory exporter: a command sent and
handled, a run executed (and executed again) on the in-memory event store, its node
attempts and model calls; and the traceparent helpers on hostile input."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chiffon.commands import Command, CommandBus, CommandRefused, Refusal
from chiffon.core import tracing
from chiffon.core.telemetry import current_traceparent
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelGateway
from chiffon.executor.outputs import OutputStore
from chiffon.workflow import load_spec

USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
KEY = AggregateKey("run", "run-1")
REQUEST_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DECISION_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
WORKFLOW = """
name: traced
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: draft, type: llm, prompt: "facts", output: {facts: string}}
  - {id: keep, type: set, values: {kept: "facts"}}
edges:
  - {from: draft, to: keep}
"""


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Chiffon's spans into memory (a provider of this test's own, not the global one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


class Ping(Command):
    owner: ClassVar[str] = "test"
    name: ClassVar[str] = "ping"

    refuse: bool = False


async def test_a_command_is_a_client_span_and_its_handling_a_child_server_span(
    spans: InMemorySpanExporter,
) -> None:
    store = InMemoryEventStore(CATALOG)
    bus = CommandBus(store, "ns")
    seen: list[str | None] = []

    async def handle(command: Ping) -> dict[str, Any]:
        seen.append(command.trace)
        assert command.trace == current_traceparent()
        if command.refuse:
            raise CommandRefused(Refusal(code="conflict", message="not now"))
        return {"ok": True}

    await bus.serve(Ping, handle)
    assert await bus.send(Ping(actor=USER, trace=REQUEST_TRACE)) == {"ok": True}
    with pytest.raises(CommandRefused):
        await bus.send(Ping(actor=USER, trace=REQUEST_TRACE, refuse=True))

    sent = [s for s in named(spans, "command ping") if s.kind == SpanKind.CLIENT]
    handled = [s for s in named(spans, "command ping") if s.kind == SpanKind.SERVER]
    assert len(sent) == len(handled) == 2
    for client, server, trace in zip(sent, handled, seen, strict=True):
        assert f"{client.context.trace_id:032x}" == REQUEST_TRACE.split("-")[1]
        assert parent_of(client) == int(REQUEST_TRACE.split("-")[2], 16)
        assert parent_of(server) == client.context.span_id
        assert server.context.trace_id == client.context.trace_id
        assert trace is not None and trace.split("-")[2] == f"{server.context.span_id:016x}"
    assert sent[0].status.status_code == StatusCode.UNSET
    assert sent[1].status.status_code == StatusCode.ERROR
    assert sent[1].attributes is not None and sent[1].attributes["error.type"] == "conflict"
    assert handled[1].status.status_code == StatusCode.ERROR


async def execution(store: InMemoryEventStore, *, claims: int, work_trace: str) -> RunExecution:
    """The run requested in REQUEST_TRACE, claimed ``claims`` times; the latest work
    item carried ``work_trace``."""
    spec = load_spec(WORKFLOW)
    requested = new_event(
        RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs={}),
        aggregate_id=KEY.aggregate_id,
        actor=USER,
        trace=REQUEST_TRACE,
    )
    await store.append(KEY, [requested])
    for n in range(1, claims + 1):
        claim = RunClaimed(executor="executor-1", pid=1, work_seq=n)
        await store.append(KEY, [new_event(claim, aggregate_id=KEY.aggregate_id, actor=EXECUTOR)])
    events, _ = await store.read_aggregate(KEY)
    return RunExecution(
        store=store,
        workflow=LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec)),
        run=RunState.from_events(KEY.aggregate_id, [(e.envelope, e.sequence) for e in events]),
        actor=EXECUTOR,
        llm=ModelGateway(offline_mode="always"),
        outputs=OutputStore(store, "test"),
        trace=work_trace,
    )


async def test_a_run_its_node_attempts_and_its_model_call_are_one_trace(
    spans: InMemorySpanExporter,
) -> None:
    store = InMemoryEventStore(CATALOG)
    running = await execution(store, claims=1, work_trace=REQUEST_TRACE)
    assert await running.execute() == "succeeded"

    [run] = named(spans, "run traced")
    [draft] = named(spans, "node draft")
    [keep] = named(spans, "node keep")
    [chat] = named(spans, "chat chiffon/echo")
    assert f"{run.context.trace_id:032x}" == REQUEST_TRACE.split("-")[1]
    assert parent_of(run) == int(REQUEST_TRACE.split("-")[2], 16)
    assert not run.links
    assert run.attributes is not None
    assert run.attributes["chiffon.outcome"] == "succeeded"
    assert run.attributes["chiffon.resumed"] is False
    assert parent_of(draft) == parent_of(keep) == run.context.span_id
    assert parent_of(chat) == draft.context.span_id and chat.kind == SpanKind.CLIENT
    assert draft.attributes is not None and draft.attributes["chiffon.attempt"] == 1
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "chiffon/echo"
    assert chat.attributes["gen_ai.system"] == "chiffon"
    assert int(str(chat.attributes["gen_ai.usage.input_tokens"])) > 0
    assert int(str(chat.attributes["gen_ai.usage.output_tokens"])) > 0
    # The run's events carry the run span's context.
    events, _ = await store.read_aggregate(KEY)
    mine = [e.envelope.trace for e in events if e.envelope.actor == EXECUTOR]
    assert mine[-1] is not None and mine[-1].split("-")[2] == f"{run.context.span_id:016x}"


async def test_a_resumed_run_stays_in_its_trace_and_links_to_what_resumed_it(
    spans: InMemorySpanExporter,
) -> None:
    store = InMemoryEventStore(CATALOG)
    running = await execution(store, claims=2, work_trace=DECISION_TRACE)
    assert await running.execute() == "succeeded"
    [run] = named(spans, "run traced")
    assert f"{run.context.trace_id:032x}" == REQUEST_TRACE.split("-")[1]
    assert parent_of(run) == int(REQUEST_TRACE.split("-")[2], 16)
    assert run.attributes is not None and run.attributes["chiffon.resumed"] is True
    [link] = run.links
    assert f"{link.context.trace_id:032x}" == DECISION_TRACE.split("-")[1]
    assert f"{link.context.span_id:016x}" == DECISION_TRACE.split("-")[2]


async def test_a_span_records_failures_but_not_signals_or_cancellation(
    spans: InMemorySpanExporter,
) -> None:
    with pytest.raises(ValueError), tracing.SpanScope("fails"):
        raise ValueError("broken")
    with pytest.raises(KeyError), tracing.SpanScope("stops", signals=(KeyError,)):
        raise KeyError("paused")
    [fails] = named(spans, "fails")
    [stops] = named(spans, "stops")
    assert fails.status.status_code == StatusCode.ERROR
    assert fails.attributes is not None and fails.attributes["error.type"] == "ValueError"
    assert stops.status.status_code == StatusCode.UNSET
    assert stops.attributes is not None and stops.attributes["chiffon.stopped_by"] == "KeyError"
    assert current_traceparent() is None  # every scope left its context behind


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # an invalid trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # an invalid span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n' OR 1=1",
        "x" * 10_000,
    ],
)
def test_a_malformed_traceparent_links_nothing_and_starts_a_trace_of_its_own(
    spans: InMemorySpanExporter, hostile: str
) -> None:
    assert tracing.span_context_of(hostile) is None
    assert tracing.links_to(hostile) == []
    assert not tracing.same_trace(hostile, REQUEST_TRACE)
    with tracing.SpanScope("root", parent=hostile):
        pass
    [root] = named(spans, "root")
    assert root.parent is None and root.context.is_valid


def test_the_gen_ai_system_is_the_model_strings_provider() -> None:
    assert tracing.gen_ai_system("anthropic/claude-sonnet-4") == "anthropic"
    assert tracing.gen_ai_system("chiffon/echo") == "chiffon"
    assert tracing.gen_ai_system("gpt-4o") == "openai"  # LiteLLM's default provider
