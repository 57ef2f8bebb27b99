"""``replay --verify`` on the in-memory event store: runs executed by the engine are
re-driven from their records and every decision matches (loops, fan-out, approvals with
a rejection, retries after provider errors, memory reads); a changed routing function is
reported at the event where the run went another way; a run still waiting for a decision
verifies as far as it went; a record with missing events is reported, not raised."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import ApprovalDecided, LlmCalled, NodeCompleted, RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, InMemoryEventStore
from chiffon.executor import graph
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.models import ModelGateway, ModelReply, ModelRequest, ProviderError
from chiffon.executor.outputs import OutputStore
from chiffon.executor.replay.driver import Counters, Verdict, verify_run
from chiffon.executor.replay.normalize import Step, first_divergence
from chiffon.executor.replay.recorded import RecordError, index_run
from chiffon.workflow import load_spec

EXAMPLES = Path(__file__).parents[3] / "examples"
USER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)


def compiled(source: str) -> LoadedWorkflow:
    spec = load_spec(source)
    return LoadedWorkflow(spec=spec, digest=spec.digest(), graph=graph.build_graph(spec))


class FlakyProvider(ModelGateway):
    """The offline model, except that the first ``failures`` calls fail as a 503 would."""

    def __init__(self, failures: int) -> None:
        super().__init__(offline_mode="always")
        self.failures = failures

    def complete(self, request: ModelRequest) -> Awaitable[ModelReply]:
        return self._answer(request)

    async def _answer(self, request: ModelRequest) -> ModelReply:
        if self.failures:
            self.failures -= 1
            raise ProviderError(request.model, "503 overloaded", provider="chiffon")
        return await super().complete(request)


async def record(
    store: InMemoryEventStore,
    workflow: LoadedWorkflow,
    run_id: str,
    inputs: dict[str, Any],
    *,
    decisions: list[bool] = (),  # type: ignore[assignment]
    llm: ModelGateway | None = None,
) -> str:
    """Execute a run as a replica would; each suspension gets the next decision, until
    none is left. The run's last outcome."""
    key = AggregateKey("run", run_id)
    request = RunRequested(
        workflow=workflow.spec.name, version=1, digest=workflow.digest, inputs=inputs
    )
    await store.append(key, [new_event(request, aggregate_id=run_id, actor=USER)], 0)
    left = list(decisions)
    while True:
        version = await store.aggregate_version(key)
        claim = RunClaimed(executor="executor-1", pid=1, work_seq=1)
        await store.append(key, [new_event(claim, aggregate_id=run_id, actor=EXECUTOR)], version)
        events, _ = await store.read_aggregate(key)
        execution = RunExecution(
            store=store,
            workflow=workflow,
            run=RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events]),
            actor=EXECUTOR,
            llm=llm or ModelGateway(offline_mode="always"),
            outputs=OutputStore(store, "test"),
        )
        outcome = await execution.execute()
        if outcome != "suspended" or not left:
            return outcome
        for approval in execution.run.pending_approvals():
            decided = ApprovalDecided(
                node_id=approval.node_id,
                iteration=approval.iteration,
                approved=left.pop(0),
                comment="add a rollback step",
            )
            version = await store.aggregate_version(key)
            await store.append(key, [new_event(decided, aggregate_id=run_id, actor=USER)], version)


async def replay(
    store: InMemoryEventStore, workflow: LoadedWorkflow, run_id: str, counters: Counters
) -> Verdict:
    events, _ = await store.read_aggregate(AggregateKey("run", run_id))
    recorded = index_run(run_id, [(e.envelope, e.sequence) for e in events])
    return await verify_run(recorded, workflow, counters)


async def recorded_calls(store: InMemoryEventStore, run_id: str) -> int:
    events, _ = await store.read_aggregate(AggregateKey("run", run_id))
    return sum(1 for e in events if isinstance(e.payload, LlmCalled))


@pytest.mark.parametrize(
    ("example", "inputs", "decisions", "nodes"),
    [
        ("linear.yaml", {"topic": "tides"}, [], 3),
        # Scores (a hash of the prompt) under 7 twice: write and review three times.
        ("review-loop.yaml", {"topic": "tides"}, [], 10),
        ("draft-review.yaml", {"topic": "tides"}, [], 2),
        # Rejected once (the plan is merged again with the reviewer's comment), then approved.
        ("parallel-approval.yaml", {"goal": "move the database"}, [False, True], 7),
    ],
)
async def test_a_recorded_example_verifies_with_every_answer_from_its_record(
    example: str, inputs: dict[str, Any], decisions: list[bool], nodes: int
) -> None:
    store = InMemoryEventStore(CATALOG)
    workflow = compiled((EXAMPLES / example).read_text())
    assert await record(store, workflow, "run-1", inputs, decisions=decisions) == "succeeded"
    counters = Counters()
    verdict = await replay(store, workflow, "run-1", counters)
    assert verdict.same, verdict.divergence and verdict.divergence.describe()
    assert verdict.nodes == nodes and verdict.note is None
    # Every model answer came from the record, once per recorded call.
    assert counters.model_calls == await recorded_calls(store, "run-1")


async def test_retries_after_provider_errors_are_decided_the_same_way() -> None:
    store = InMemoryEventStore(CATALOG)
    source = (EXAMPLES / "linear.yaml").read_text().replace("initial: 500ms", "initial: 1ms")
    workflow = compiled(source)
    await record(store, workflow, "run-1", {"topic": "tides"}, llm=FlakyProvider(failures=1))
    verdict = await replay(store, workflow, "run-1", Counters())
    assert verdict.same, verdict.divergence and verdict.divergence.describe()
    assert verdict.nodes == 3


async def test_a_changed_routing_function_is_reported_at_the_first_divergent_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = InMemoryEventStore(CATALOG)
    source = (EXAMPLES / "review-loop.yaml").read_text()
    workflow = compiled(source)
    await record(store, workflow, "run-1", {"topic": "tides"})
    events, _ = await store.read_aggregate(AggregateKey("run", "run-1"))
    # Where the recorded run first went from review to bump (score < 7).
    bump = next(
        e.sequence
        for e in events
        if getattr(e.payload, "node_id", None) == "bump" and e.type == "run.node.started"
    )
    original = graph._router

    def accept_instead_of_bump(spec: Any, node: Any, edges: Any) -> Any:
        route = original(spec, node, edges)
        if node is None or node.id != "review":
            return route

        async def changed(state: Mapping[str, Any], config: RunnableConfig) -> list[str]:
            return ["accept" if t == "bump" else t for t in await route(state, config)]

        return changed

    monkeypatch.setattr(graph, "_router", accept_instead_of_bump)
    verdict = await replay(store, compiled(source), "run-1", Counters())
    assert verdict.divergence is not None
    recorded, replayed = verdict.divergence.recorded, verdict.divergence.replayed
    assert recorded is not None and replayed is not None
    assert (recorded.type, recorded.lane, recorded.sequence) == ("run.node.started", "bump", bump)
    assert (replayed.type, replayed.lane) == ("run.node.started", "accept")
    assert json.loads(replayed.detail) == {"attempt": 1, "iteration": 1}


async def test_a_changed_output_is_reported_at_its_node_completion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = InMemoryEventStore(CATALOG)
    source = (EXAMPLES / "review-loop.yaml").read_text()
    await record(store, compiled(source), "run-1", {"topic": "tides"})
    changed = source.replace(
        'values: {revision: "revision + 1"}', 'values: {revision: "revision + 2"}'
    )
    # Same version, other engine: the expression is evaluated differently now.
    verdict = await replay(store, compiled(changed), "run-1", Counters())
    assert verdict.divergence is not None and verdict.divergence.recorded is not None
    assert verdict.divergence.recorded.type == "run.node.completed"
    assert verdict.divergence.recorded.lane == "bump"
    assert json.loads(verdict.divergence.recorded.detail)["outputs"] == {"revision": 2}


async def test_a_run_waiting_for_a_decision_verifies_as_far_as_it_went() -> None:
    store = InMemoryEventStore(CATALOG)
    workflow = compiled((EXAMPLES / "parallel-approval.yaml").read_text())
    assert await record(store, workflow, "run-1", {"goal": "move"}) == "suspended"
    verdict = await replay(store, workflow, "run-1", Counters())
    assert verdict.same, verdict.divergence and verdict.divergence.describe()
    assert verdict.note == "sign_off (iteration 1) was still waiting for a decision"


async def test_a_resumed_memory_read_uses_the_values_read_then() -> None:
    store = InMemoryEventStore(CATALOG)
    remember = compiled(
        "name: deploy\nversion: 1\ninputs: {release: {type: string}}\nnodes:\n"
        "  - {id: ship, type: set, values: {last_deploy: release},"
        " memory: {namespace: infra, write: [last_deploy]}}\n"
    )
    recall = compiled(
        "name: report\nversion: 1\nnodes:\n  - {id: ask, type: llm, model: chiffon/echo,"
        ' prompt: "last deploy was {memory_last_deploy}",'
        ' memory: {read: ["infra:*:*:last_deploy"]}}\n'
    )
    await record(store, remember, "d1", {"release": "v1.4"})
    await record(store, recall, "r1", {})
    await record(store, remember, "d2", {"release": "v2.0"})  # memory holds v2.0 now
    verdict = await replay(store, recall, "r1", Counters())
    assert verdict.same, verdict.divergence and verdict.divergence.describe()


async def test_a_record_that_lost_its_first_events_is_reported_not_raised() -> None:
    store = InMemoryEventStore(CATALOG)
    workflow = compiled((EXAMPLES / "linear.yaml").read_text())
    await record(store, workflow, "run-1", {"topic": "tides"})
    events, _ = await store.read_aggregate(AggregateKey("run", "run-1"))
    with pytest.raises(RecordError, match=r"its first event is run\.claimed .* not run\.requested"):
        index_run("run-1", [(e.envelope, e.sequence) for e in events[1:]])
    with pytest.raises(RecordError, match="has no events"):
        index_run("run-1", [])


async def test_a_record_missing_a_node_completion_diverges_there() -> None:
    store = InMemoryEventStore(CATALOG)
    workflow = compiled((EXAMPLES / "linear.yaml").read_text())
    await record(store, workflow, "run-1", {"topic": "tides"})
    events, _ = await store.read_aggregate(AggregateKey("run", "run-1"))
    kept = [
        (e.envelope, e.sequence)
        for e in events
        if not (isinstance(e.payload, NodeCompleted) and e.payload.node_id == "outline")
    ]
    verdict = await verify_run(index_run("run-1", kept), workflow, Counters())
    assert verdict.divergence is not None and verdict.divergence.recorded is not None
    # The record goes on to "write"; the replay, with no answer that completes
    # "outline" (its answer is known from the completion only), fails it.
    assert verdict.divergence.recorded.lane == "write"
    replayed = verdict.divergence.replayed
    assert replayed is not None and (replayed.type, replayed.lane) == ("run.node.failed", "outline")


def step(kind: str, lane: str, detail: str = "{}") -> Step:
    return Step(kind, lane, detail)


def test_parallel_lanes_may_interleave_in_another_order() -> None:
    recorded = [step("s", "a"), step("s", "b"), step("c", "b"), step("c", "a"), step("end", "")]
    replayed = [step("s", "b"), step("s", "a"), step("c", "a"), step("c", "b"), step("end", "")]
    assert first_divergence(recorded, replayed) is None


def test_a_step_the_record_does_not_have_is_a_divergence() -> None:
    recorded = [step("s", "a"), step("end", "")]
    replayed = [step("s", "a"), step("s", "b"), step("end", "")]
    divergence = first_divergence(recorded, replayed)
    assert divergence is not None
    assert divergence.recorded is None and divergence.replayed == step("s", "b")


def test_a_cancelled_record_is_compared_up_to_where_it_stopped() -> None:
    recorded = [step("s", "a"), step("run.cancelled", "")]
    assert first_divergence(recorded, [step("s", "a")], open_end=True) is None
    assert first_divergence(recorded, [step("s", "a")]) is not None
