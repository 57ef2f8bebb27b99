"""Driving one run's graph directly (no worker, no consumer) against the real event
store, with a scripted model in place of a provider."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

from chiffon.events import Actor, new_event
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, JetStreamEventStore, RecordedEvent
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.llm import LlmReply, ProviderError
from chiffon.executor.offline import echo_output
from chiffon.workflow import load_spec

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


class ScriptedLlm:
    """Answers like chiffon/echo unless a script (model, messages, schema) -> text says
    otherwise; raise ``ProviderError`` from the script to fail a call."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script
        self.calls: list[tuple[str, str]] = []

    def resolve(self, model: str) -> tuple[str, str]:
        return model, model.split("/", 1)[0]

    async def complete(
        self, model: str, messages: list[dict[str, str]], *, response_format: Any = None, **_: Any
    ) -> LlmReply:
        await asyncio.sleep(0)
        prompt = messages[-1]["content"]
        self.calls.append((model, prompt))
        schema = response_format["json_schema"]["schema"] if response_format else None
        text = self.script(model, messages, schema) if self.script else None
        if inspect.isawaitable(text):
            text = await text
        if text is None:
            text = echo_output(schema, prompt)
        return LlmReply(text, model.split("/", 1)[0], model, 10, 5, 1.0, "stop")


def fail(message: str = "boom") -> str:
    raise ProviderError("m", message)


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
    state.apply(event, result.version)
    return state


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
