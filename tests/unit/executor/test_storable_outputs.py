"""What a run records is storable whatever a model answers (issue 16): a NUL or a lone
surrogate in an answer or a provider's error is replaced by U+FFFD before the append,
the replacement noted on ``run.node.completed``, and the run goes on."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelGateway, ModelReply, ModelRequest, ProviderError
from chiffon.executor.outputs import OutputStore
from chiffon.workflow import load_spec

USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
KEY = AggregateKey("run", "run-1")
WORKFLOW = """
name: hostile-answers
version: 1
defaults: {model: scripted/model, retry: {attempts: 1}}
nodes:
  - {id: ask, type: llm, prompt: "anything"}
  - {id: facts, type: llm, prompt: "list", output: {items: list[string]}}
  - {id: joined, type: set, values: {both: "ask + '|'"}}
edges:
  - {from: ask, to: facts}
  - {from: facts, to: joined}
"""


class Scripted(ModelGateway):
    """Answers each call with the next scripted answer, or raises it if it is an error."""

    def __init__(self, *answers: str | ProviderError) -> None:
        super().__init__(offline_mode="never")
        self.answers = list(answers)

    def in_process(self, model: str) -> bool:
        return True

    def complete(self, request: ModelRequest) -> Awaitable[ModelReply]:
        answer = self.answers.pop(0)

        async def reply() -> ModelReply:
            if isinstance(answer, ProviderError):
                raise answer
            return ModelReply(answer, "scripted", request.model, 1, 1, 1.0, "stop\x00")

        return reply()


async def run_with(model: ModelGateway, workflow: str = WORKFLOW) -> tuple[str, list[Any]]:
    store = InMemoryEventStore(CATALOG)
    spec = load_spec(workflow)
    requested = RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs={})
    await store.append(KEY, [new_event(requested, aggregate_id=KEY.aggregate_id, actor=USER)], 0)
    claim = RunClaimed(executor="executor-1", pid=1, work_seq=1)
    await store.append(KEY, [new_event(claim, aggregate_id=KEY.aggregate_id, actor=EXECUTOR)], 1)
    events, _ = await store.read_aggregate(KEY)
    execution = RunExecution(
        store=store,
        workflow=LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec)),
        run=RunState.from_events(KEY.aggregate_id, [(e.envelope, e.sequence) for e in events]),
        actor=EXECUTOR,
        llm=model,
        outputs=OutputStore(store, "test"),
    )
    status = await execution.execute()
    events, _ = await store.read_aggregate(KEY)
    for stored in events:  # every recorded event is valid UTF-8 JSON without a NUL
        text = stored.envelope.model_dump_json()
        assert "\\u0000" not in text and "\x00" not in text
        text.encode("utf-8")
    return status, [stored.envelope for stored in events]


def payloads(events: list[Any], event_type: str) -> list[Any]:
    return [e.payload for e in events if e.type == event_type]


async def test_an_answer_with_a_nul_and_a_lone_surrogate_completes_with_the_replacement_noted() -> (
    None
):
    status, events = await run_with(
        Scripted("Paris\x00 is \ud800here", json.dumps({"items": ["ok", "bad\x00", "\udfff"]}))
    )

    assert status == "succeeded"
    completed = payloads(events, "run.node.completed")
    assert [(c.node_id, c.outputs, c.replaced) for c in completed] == [
        ("ask", {"ask": "Paris\ufffd is \ufffdhere"}, ["/ask"]),
        ("facts", {"items": ["ok", "bad\ufffd", "\ufffd"]}, ["/items/1", "/items/2"]),
        ("joined", {"both": "Paris\ufffd is \ufffdhere|"}, []),
    ]
    (run_completed,) = payloads(events, "run.completed")
    assert run_completed.outputs["ask"] == "Paris\ufffd is \ufffdhere"
    assert {c.finish_reason for c in payloads(events, "run.llm.called")} == {"stop\ufffd"}


async def test_a_provider_error_holding_a_nul_is_recorded_replaced() -> None:
    error = ProviderError("scripted/model", "bad \x00 request \ud800", retryable=False)

    status, events = await run_with(Scripted(error))

    assert status == "failed"
    (called,) = payloads(events, "run.llm.called")
    assert called.error == "bad \ufffd request \ufffd"
    (failed,) = payloads(events, "run.node.failed")
    assert "bad \ufffd request \ufffd" in failed.error.message
    (run_failed,) = payloads(events, "run.failed")
    assert "\x00" not in run_failed.error.message
