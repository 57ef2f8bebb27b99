"""Driving one run's graph directly (no worker, no consumer) against the real event
store, with the real model gateway calling a scripted OpenAI-compatible test server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from chiffon.events import Actor, new_event
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, JetStreamEventStore, RecordedEvent
from chiffon.executor.domain import RunState, evolve
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelGateway, ModelReply, ModelRequest
from chiffon.workflow import load_spec

from .openai_server import FakeOpenAI, ScriptedFailure

TESTER = Actor(kind="user", id="tester")
EXECUTOR = Actor.service("executor", 1)


class RunLog:
    """The real event store (NATS JetStream, a namespace of the test's own) and the run a
    test drives in it. The helpers below read the run back from JetStream."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.store = store
        self.run_id = "run1"
        self._runs = 0

    def next_run(self) -> str:
        self._runs += 1
        self.run_id = f"run{self._runs}"
        return self.run_id

    @property
    def key(self) -> AggregateKey:
        return AggregateKey("run", self.run_id)

    async def of(self) -> list[RecordedEvent]:
        events, _ = await self.store.read_aggregate(self.key)
        return events

    async def append_outside(self, payload: Any) -> None:
        """An event from outside the executor (a user), after whatever is there now."""
        await self.store.append(
            self.key, [new_event(payload, aggregate_id=self.run_id, actor=TESTER)]
        )


Script = Callable[[str, list[dict[str, str]], dict[str, Any] | None], Any]


class ScriptedLlm(ModelGateway):
    """The executor's real model gateway (LiteLLM) in front of the OpenAI-compatible test
    server (``provider`` fixture), which answers by ``script`` while this gateway calls it:
    (model, messages, schema) -> text, None for the echo answer, or an awaitable; raise
    ``ScriptedFailure`` (see ``fail``) for a provider error. ``chiffon/*`` models answer
    offline, as in production."""

    def __init__(self, script: Script | None = None) -> None:
        super().__init__(offline_mode="never")
        # LiteLLM's import (seconds on a busy machine) now, as the executor does at start,
        # not inside the first call of a test that times its run.
        self.setup()
        self.script = script
        self.calls: list[tuple[str, str]] = []

    async def complete(self, request: ModelRequest) -> ModelReply:
        assert PROVIDER.server is not None, "use the provider fixture"
        self.calls.append((request.model, request.messages[-1]["content"]))
        PROVIDER.server.script = self.script
        return await super().complete(request)


@dataclass
class _Provider:
    server: FakeOpenAI | None = None


PROVIDER = _Provider()


@pytest.fixture(autouse=True)
async def provider(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    """The OpenAI-compatible test server every ``openai/*`` call of a test goes to."""
    server = await FakeOpenAI().start()
    monkeypatch.setenv("OPENAI_API_BASE", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    PROVIDER.server = server
    try:
        yield server
    finally:
        PROVIDER.server = None
        await server.stop()


def fail(message: str = "boom") -> str:
    raise ScriptedFailure(message)


async def start(
    log: RunLog, source: str, inputs: dict[str, Any] | None = None
) -> tuple[LoadedWorkflow, RunState]:
    """Register nothing, request a new run of ``source``: its workflow and state."""
    spec = load_spec(source)
    workflow = LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec))
    run_id = log.next_run()
    requested = new_event(
        RunRequested(
            workflow=spec.name,
            version=spec.version,
            digest=spec.digest(),
            inputs=spec.validate_inputs(inputs or {}),
        ),
        aggregate_id=run_id,
        actor=TESTER,
    )
    await log.store.append(log.key, [requested], 0)
    return workflow, RunState.from_events(
        run_id, [(e.envelope, e.sequence) for e in await log.of()]
    )


async def claim(log: RunLog, executor: str = "executor-1") -> RunState:
    events, version = await log.store.read_aggregate(log.key)
    state = RunState.from_events(log.run_id, [(e.envelope, e.sequence) for e in events])
    event = new_event(
        RunClaimed(executor=executor, pid=1, resumed=state.claims > 0, work_seq=1),
        aggregate_id=log.run_id,
        actor=EXECUTOR,
    )
    result = await log.store.append(log.key, [event], expected_version=version)
    return evolve(state, event, result.version)


def execution(log: RunLog, workflow: LoadedWorkflow, state: RunState, llm: Any) -> RunExecution:
    return RunExecution(
        store=log.store,
        workflow=workflow,
        run=state,
        actor=EXECUTOR,
        llm=llm,
        outputs=None,  # type: ignore[arg-type]
    )


async def run(
    log: RunLog, source: str, inputs: dict[str, Any] | None = None, llm: Any = None
) -> tuple[str, RunLog, Any]:
    llm = llm or ScriptedLlm()
    workflow, _ = await start(log, source, inputs)
    state = await claim(log)
    outcome = await execution(log, workflow, state, llm).execute()
    return outcome, log, llm


async def types(log: RunLog) -> list[str]:
    return [e.type for e in await log.of()]


async def completed(log: RunLog) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.payload.node_id, e.payload.outputs)
        for e in await log.of()
        if e.type == "run.node.completed"
    ]


async def last(log: RunLog, event_type: str) -> Any:
    found = [e.payload for e in await log.of() if e.type == event_type]
    return found[-1] if found else None


def dumps(value: Any) -> str:
    return json.dumps(value)


# A review loop: write, review, and write again while the score is under 7 (3 times at most).
LOOP = """
name: loop
version: 1
defaults: {model: openai/x}
nodes:
  - {id: begin, type: set, values: {score: "0"}}
  - {id: write, type: llm, prompt: "draft after {score}", output: {draft: string}}
  - {id: review, type: llm, prompt: "review {draft}", output: {score: integer}}
edges:
  - {from: begin, to: write}
  - {from: write, to: review}
  - {from: review, to: write, when: "score < 7", max_iterations: 3}
"""
