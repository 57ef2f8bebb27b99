"""In-memory stand-ins for unit tests: an event store with per-aggregate optimistic
concurrency (the part of ``JetStreamEventStore`` the executor uses) and a scripted model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from chiffon.events import Actor, Envelope, new_event
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import ANY, AggregateKey, AppendResult, ConcurrencyConflict, RecordedEvent
from chiffon.eventstore.streams import Streams
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.llm import LlmReply, ProviderError
from chiffon.executor.offline import echo_output
from chiffon.workflow import load_spec

TESTER = Actor(kind="user", id="tester")
EXECUTOR = Actor.service("executor", 1)


class MemoryStore:
    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.streams = Streams("test")

    def of(self, aggregate_id: str) -> list[RecordedEvent]:
        return [e for e in self.events if e.envelope.aggregate_id == aggregate_id]

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: Any = ANY,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        await asyncio.sleep(0)
        mine = self.of(key.aggregate_id)
        current = mine[-1].sequence if mine else 0
        if expected_version is not ANY and expected_version != current:
            raise ConcurrencyConflict(key.aggregate, key.aggregate_id, expected_version, current)
        sequences = []
        for envelope in events:
            envelope.model_dump_json()  # must serialise
            sequence = len(self.events) + 1
            self.events.append(
                RecordedEvent(
                    envelope=envelope, stream="RUNS", sequence=sequence, subject=envelope.type
                )
            )
            sequences.append(sequence)
        return AppendResult(sequences=tuple(sequences), duplicates=tuple(False for _ in sequences))

    async def read_aggregate(self, key: AggregateKey) -> tuple[list[RecordedEvent], int]:
        mine = self.of(key.aggregate_id)
        return mine, (mine[-1].sequence if mine else 0)


Script = Callable[[str, list[dict[str, str]], dict[str, Any] | None], str]


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
        if text is None:
            text = echo_output(schema, prompt)
        return LlmReply(text, model.split("/", 1)[0], model, 10, 5, 1.0, "stop")


def fail(message: str = "boom") -> str:
    raise ProviderError("m", message)


def start(
    store: MemoryStore, source: str, inputs: dict[str, Any] | None = None, run_id: str = "run1"
) -> tuple[LoadedWorkflow, RunState]:
    spec = load_spec(source)
    workflow = LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec))
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
    store.events.append(
        RecordedEvent(
            envelope=requested, stream="RUNS", sequence=len(store.events) + 1, subject="x"
        )
    )
    return workflow, RunState.from_events(
        run_id, [(e.envelope, e.sequence) for e in store.of(run_id)]
    )


async def claim(store: MemoryStore, run_id: str = "run1", executor: str = "executor-1") -> RunState:
    events, version = await store.read_aggregate(AggregateKey("run", run_id))
    state = RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events])
    event = new_event(
        RunClaimed(executor=executor, pid=1, resumed=state.claims > 0, work_seq=1),
        aggregate_id=run_id,
        actor=EXECUTOR,
    )
    result = await store.append(AggregateKey("run", run_id), [event], expected_version=version)
    state.apply(event, result.version)
    return state


def execution(
    store: MemoryStore, workflow: LoadedWorkflow, state: RunState, llm: Any
) -> RunExecution:
    return RunExecution(
        store=store,  # type: ignore[arg-type]
        workflow=workflow,
        run=state,
        actor=EXECUTOR,
        llm=llm,
        outputs=None,  # type: ignore[arg-type]
    )


async def run(
    source: str,
    inputs: dict[str, Any] | None = None,
    llm: Any = None,
    store: MemoryStore | None = None,
) -> tuple[str, MemoryStore, Any]:
    store = store or MemoryStore()
    llm = llm or ScriptedLlm()
    workflow, _ = start(store, source, inputs)
    state = await claim(store)
    outcome = await execution(store, workflow, state, llm).execute()
    return outcome, store, llm


def types(store: MemoryStore, run_id: str = "run1") -> list[str]:
    return [e.type for e in store.of(run_id)]


def completed(store: MemoryStore, run_id: str = "run1") -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.payload.node_id, e.payload.outputs)
        for e in store.of(run_id)
        if e.type == "run.node.completed"
    ]


def last(store: MemoryStore, event_type: str, run_id: str = "run1") -> Any:
    found = [e.payload for e in store.of(run_id) if e.type == event_type]
    return found[-1] if found else None


def dumps(value: Any) -> str:
    return json.dumps(value)
