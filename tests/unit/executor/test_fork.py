"""Forks decided on the in-memory store: which completions a fork reuses, the link and
changes its request records, and every refusal writing nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from chiffon.commands import CommandRefused, RegisterWorkflow, StartRun
from chiffon.commands.model import ForkRun
from chiffon.events import CATALOG, Actor, EventPayload, new_event
from chiffon.events import runs as ev
from chiffon.eventstore import AggregateKey
from chiffon.executor.application import Runs, Workflows
from chiffon.executor.domain import ClaimRun, RunState, decide_claim
from chiffon.executor.repository import RunRepository, WorkflowRepository
from tests.support.stores import ConflictingStore

ALICE = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
NODES = ("outline", "draft", "critique", "revise", "title")
CHAIN = """\
name: chain
version: 1
inputs: {topic: {type: string}, words: {type: integer, default: 50}}
defaults: {model: chiffon/echo}
nodes:
  - {id: outline, type: llm, prompt: "Outline {topic}", output: {outline: string}}
  - {id: draft, type: llm, prompt: "Draft {outline}", output: {draft: string}}
  - {id: critique, type: llm, prompt: "Critique {draft}", output: {critique: string}}
  - {id: revise, type: llm, prompt: "Revise {draft} per {critique}", output: {final: string}}
  - {id: title, type: llm, prompt: "Title for {final}", output: {title: string}}
  - {id: publish, type: approval, message: "Publish {title}?"}
edges:
  - {from: outline, to: draft}
  - {from: draft, to: critique}
  - {from: critique, to: revise}
  - {from: revise, to: title}
  - {from: title, to: publish}
"""


class Executor:
    """The executor's application services over one in-memory store."""

    def __init__(self) -> None:
        self.store = ConflictingStore(CATALOG)
        self.workflow_repository = WorkflowRepository(self.store)
        self.repository = RunRepository(self.store)
        self.runs = Runs(self.store, self.workflow_repository, self.repository, clock=lambda: NOW)
        self.workflows = Workflows(self.store, self.workflow_repository, clock=lambda: NOW)

    async def parent(self, ran: tuple[str, ...] = NODES) -> str:
        """A run of ``chain`` in which the nodes ``ran`` started and completed in order."""
        await self.workflows.register(RegisterWorkflow(actor=ALICE, source=CHAIN))
        started = await self.runs.start(
            StartRun(actor=ALICE, workflow="chain", inputs={"topic": "NATS"})
        )
        run_id = str(started["run_id"])
        payloads: list[EventPayload] = [ev.RunClaimed(executor="executor-1", pid=1, work_seq=1)]
        for node in ran:
            payloads += [
                ev.NodeStarted(node_id=node, node_type="llm", attempt=1),
                ev.NodeCompleted(
                    node_id=node, attempt=1, outputs={"out": f"{node} of NATS"}, duration_ms=5
                ),
            ]
        await self.record(run_id, *payloads)
        return run_id

    async def record(self, run_id: str, *payloads: EventPayload) -> None:
        state = await self.repository.load(run_id)
        events = [new_event(p, aggregate_id=run_id, actor=EXECUTOR) for p in payloads]
        await self.store.append(AggregateKey("run", run_id), events, state.version)

    async def fork(self, run_id: str, at: str, **changes: Any) -> dict[str, Any]:
        return await self.runs.fork(ForkRun(actor=ALICE, run_id=run_id, at=at, **changes))

    async def payloads(self, run_id: str) -> list[EventPayload]:
        events, _ = await self.store.read_aggregate(AggregateKey("run", run_id))
        return [e.payload for e in events]

    async def event_count(self) -> int:
        return await self.store.last_sequence("RUNS")


@pytest.fixture
def executor() -> Executor:
    return Executor()


async def test_a_fork_reuses_the_completions_before_its_node_and_is_runnable_after_them(
    executor: Executor,
) -> None:
    parent = await executor.parent()
    forked = await executor.fork(parent, "critique", model="openai/gpt-4o-mini")
    assert forked["created"] is True
    assert forked["forked_from"] == {"run_id": parent, "at": "critique"}
    log = await executor.payloads(forked["run_id"])
    request = log[0]
    assert isinstance(request, ev.RunRequested) and request.fork is not None
    assert (request.fork.run_id, request.fork.at) == (parent, "critique")
    assert request.fork.changes == (ev.NodeChange(node_id="critique", model="openai/gpt-4o-mini"),)
    assert request.inputs == {"topic": "NATS", "words": 50}
    reused = [(type(p).__name__, getattr(p, "node_id", None)) for p in log[1:-1]]
    assert reused == [
        ("NodeStarted", "outline"),
        ("NodeCompleted", "outline"),
        ("NodeStarted", "draft"),
        ("NodeCompleted", "draft"),
    ]
    completed = [p for p in log if isinstance(p, ev.NodeCompleted)]
    assert [c.outputs for c in completed] == [{"out": "outline of NATS"}, {"out": "draft of NATS"}]
    assert all(c.duration_ms == 0 for c in completed)  # the fork spent nothing on them
    assert log[-1] == ev.ForkPrepared(reused=2)

    # Not runnable on its request alone (a replica taking that work item must not run it
    # before the reused outputs are there); runnable once prepared.
    run = await executor.repository.load(forked["run_id"])
    only_request = RunState.from_events(
        forked["run_id"],
        [(new_event(request, aggregate_id=forked["run_id"], actor=ALICE), 1)],
    )
    assert decide_claim(only_request, ClaimRun(1, "executor-1", 1), NOW) == []
    assert run.fork_prepared and run.status == "pending"
    assert decide_claim(run, ClaimRun(run.version, "executor-1", 1), NOW) != []


async def test_the_changed_spec_is_recorded_by_digest_and_rebuilt_by_any_replica(
    executor: Executor,
) -> None:
    parent = await executor.parent()
    forked = await executor.fork(parent, "critique", prompt="Be harsh about {draft}")
    request = (await executor.payloads(forked["run_id"]))[0]
    assert isinstance(request, ev.RunRequested)
    registered = await executor.workflow_repository.get("chain", 1)
    assert registered is not None and request.digest != registered.digest
    # Another replica (a fresh repository) compiles the same spec from the request.
    loaded = await WorkflowRepository(executor.store).for_run(request)
    assert loaded is not None and loaded.digest == request.digest
    node = loaded.spec.node("critique")
    assert getattr(node, "prompt") == "Be harsh about {draft}"  # noqa: B009
    assert getattr(loaded.spec.node("revise"), "prompt") == "Revise {draft} per {critique}"  # noqa: B009
    # A request whose digest does not match its changes is not executed.
    tampered = request.model_copy(update={"digest": "0" * 64})
    assert await WorkflowRepository(executor.store).for_run(tampered) is None


async def test_a_fork_of_a_fork_keeps_its_parents_changes(executor: Executor) -> None:
    parent = await executor.parent()
    first = await executor.fork(parent, "critique", model="openai/gpt-4o-mini")
    await executor.record(
        first["run_id"],
        ev.RunClaimed(executor="executor-1", pid=1, work_seq=9),
        *[
            p
            for node in ("critique", "revise")
            for p in (
                ev.NodeStarted(node_id=node, node_type="llm", attempt=1),
                ev.NodeCompleted(node_id=node, attempt=1, outputs={"out": node}, duration_ms=1),
            )
        ],
    )
    second = await executor.fork(first["run_id"], "revise", prompt="Shorter: {draft}")
    log = await executor.payloads(second["run_id"])
    request = log[0]
    assert isinstance(request, ev.RunRequested) and request.fork is not None
    assert request.fork.changes == (
        ev.NodeChange(node_id="critique", model="openai/gpt-4o-mini"),
        ev.NodeChange(node_id="revise", prompt="Shorter: {draft}"),
    )
    reused = [p.node_id for p in log if isinstance(p, ev.NodeCompleted)]
    assert reused == ["outline", "draft", "critique"]
    loaded = await executor.workflow_repository.for_run(request)
    assert loaded is not None
    assert loaded.spec.effective_model("critique") == "openai/gpt-4o-mini"


async def test_completions_after_the_nodes_first_start_are_not_reused(executor: Executor) -> None:
    await executor.workflows.register(RegisterWorkflow(actor=ALICE, source=CHAIN))
    started = await executor.runs.start(
        StartRun(actor=ALICE, workflow="chain", inputs={"topic": "x"})
    )
    run_id = started["run_id"]
    failure = ev.ErrorInfo(type="timeout", message="slow")
    await executor.record(
        run_id,
        ev.NodeStarted(node_id="outline", node_type="llm", attempt=1),
        ev.NodeCompleted(node_id="outline", attempt=1, outputs={"o": 1}, duration_ms=1),
        ev.NodeStarted(node_id="draft", node_type="llm", attempt=1),
        ev.NodeFailed(node_id="draft", attempt=1, error=failure, will_retry=True, duration_ms=1),
        ev.NodeStarted(node_id="draft", node_type="llm", attempt=2),
        ev.NodeCompleted(node_id="draft", attempt=2, outputs={"d": 2}, duration_ms=1),
    )
    forked = await executor.fork(run_id, "draft")
    log = await executor.payloads(forked["run_id"])
    assert [p.node_id for p in log if isinstance(p, ev.NodeCompleted)] == ["outline"]
    request = log[0]
    assert isinstance(request, ev.RunRequested) and request.fork is not None
    # No change to the spec: the registered version itself, by its digest.
    assert (
        request.fork.changes == () and request.digest == (await executor.payloads(run_id))[0].digest
    )  # type: ignore[attr-defined]


async def test_inputs_override_the_parents_and_are_checked(executor: Executor) -> None:
    parent = await executor.parent()
    forked = await executor.fork(parent, "outline", inputs={"topic": "Kafka", "words": "80"})
    request = (await executor.payloads(forked["run_id"]))[0]
    assert isinstance(request, ev.RunRequested) and request.fork is not None
    assert request.inputs == {"topic": "Kafka", "words": 80}
    assert request.fork.inputs == ("topic", "words")
    assert len(await executor.payloads(forked["run_id"])) == 2  # nothing before outline
    before = await executor.event_count()
    with pytest.raises(CommandRefused) as refused:
        await executor.fork(parent, "outline", inputs={"words": "many", "colour": "red"})
    assert refused.value.refusal.code == "invalid"
    messages = [d["message"] for d in refused.value.refusal.details]
    assert any("'colour'" in m for m in messages) and any("'words'" in m for m in messages)
    assert await executor.event_count() == before


@pytest.mark.parametrize(
    ("at", "changes", "code", "says"),
    [
        ("nope", {}, "invalid", "has no node 'nope'"),
        ("publish", {"model": "openai/gpt-4o"}, "invalid", "only an llm node has a model"),
        ("publish", {"prompt": "hi"}, "invalid", "only an llm node has a prompt"),
        ("critique", {"prompt": "Use {missing}"}, "invalid", "the workflow has 1 error"),
        ("critique", {"model": "no slash"}, "invalid", "the workflow has"),
        ("title", {}, "conflict", "never started"),
    ],
)
async def test_refusals_write_nothing(
    executor: Executor, at: str, changes: dict[str, Any], code: str, says: str
) -> None:
    parent = await executor.parent(ran=NODES[:3])  # revise and title never started
    before = await executor.event_count()
    with pytest.raises(CommandRefused) as refused:
        await executor.fork(parent, at, **changes)
    assert refused.value.refusal.code == code
    assert says in refused.value.refusal.message
    assert await executor.event_count() == before


async def test_an_unknown_run_is_not_found(executor: Executor) -> None:
    with pytest.raises(CommandRefused) as refused:
        await executor.fork("no-such-run", "draft")
    assert refused.value.refusal.code == "not_found"
    assert await executor.event_count() == 0


async def test_a_repeat_under_the_same_key_is_the_same_fork(executor: Executor) -> None:
    parent = await executor.parent()
    command = ForkRun(actor=ALICE, run_id=parent, at="draft", model="a/b", idempotency_key="f1")
    first = await executor.runs.fork(command)
    again = await executor.runs.fork(command)
    assert again["run_id"] == first["run_id"] and again["created"] is False
    assert len(await executor.payloads(first["run_id"])) == 4  # request, outline x2, prepared
    with pytest.raises(CommandRefused) as refused:
        await executor.runs.fork(command.model_copy(update={"model": "a/c"}))
    assert refused.value.refusal.code == "conflict"


async def test_a_fork_survives_a_lost_race_for_its_first_append(executor: Executor) -> None:
    parent = await executor.parent()
    executor.store.conflicts = 1
    forked = await executor.fork(parent, "draft")
    assert forked["created"] is True
    assert len(await executor.payloads(forked["run_id"])) == 4


def test_a_version_1_request_still_decodes() -> None:
    current = new_event(
        ev.RunRequested(workflow="chain", version=1, digest="d" * 64),
        aggregate_id="r1",
        actor=ALICE,
    )
    document = json.loads(current.model_dump_json())
    document["schema_version"] = 1
    del document["payload"]["fork"]
    decoded = CATALOG.decode(json.dumps(document))
    assert decoded.schema_version == 2 and decoded.payload.fork is None


SHIP = """\
name: ship
version: 1
nodes:
  - id: deploy
    type: agent
    requires: [shell]
    task: {tool: shell, command: "deploy"}
    output: {last_deploy: string}
    memory: {write: [last_deploy]}
  - {id: announce, type: llm, model: chiffon/echo, prompt: "Deployed {last_deploy}"}
edges:
  - {from: deploy, to: announce}
"""


async def test_a_reused_agent_node_keeps_the_agent_whose_name_its_memory_is_under(
    executor: Executor,
) -> None:
    await executor.workflows.register(RegisterWorkflow(actor=ALICE, source=SHIP))
    started = await executor.runs.start(StartRun(actor=ALICE, workflow="ship"))
    run_id = started["run_id"]
    await executor.record(
        run_id,
        ev.NodeStarted(node_id="deploy", node_type="agent", attempt=1),
        ev.AgentTaskRequested(task_id="t1", node_id="deploy", attempt=1),
        ev.AgentTaskAssigned(
            task_id="t1", node_id="deploy", agent_id="a-1", agent_name="gpu.box", iteration=1
        ),
        ev.AgentTaskFinished(task_id="t1", node_id="deploy", ok=True),
        ev.NodeCompleted(node_id="deploy", attempt=1, outputs={"last_deploy": "v3"}, duration_ms=9),
        ev.NodeStarted(node_id="announce", node_type="llm", attempt=1),
    )
    forked = await executor.fork(run_id, "announce", prompt="Shipped {last_deploy}")
    log = await executor.payloads(forked["run_id"])
    assert [type(p).__name__ for p in log] == [
        "RunRequested",
        "NodeStarted",
        "AgentTaskAssigned",  # the task itself is not run again: no request, no finish
        "NodeCompleted",
        "ForkPrepared",
    ]
    run = await executor.repository.load(forked["run_id"])
    assert run.task_agents[("deploy", 1)] == "gpu.box"
