"""Re-drive one recorded run with the executor's own engine and compare its decisions.

The run is executed again from its request (``RunExecution``, the compiled graph, the
node runners), into an in-memory event store (``capture``), with every outside answer
taken from the record (``answers``): no provider, no agent, no wait. Nothing recorded is
replayed as done: every node runs again, and what it decides is compared with what it
decided then (``normalize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from chiffon.events import Actor, Envelope, uuid7
from chiffon.events import runs as ev
from chiffon.eventstore import AggregateKey, EventStore
from chiffon.executor.agents.dispatch import AgentDispatch, install
from chiffon.executor.domain import RunState, evolve
from chiffon.executor.execution import LoadedWorkflow, Outcome, RunExecution
from chiffon.executor.nodes import RunCancelledSignal
from chiffon.executor.outputs import OutputStore
from chiffon.executor.replay.answers import (
    Asks,
    RecordedAgents,
    RecordedDirectory,
    RecordedModels,
    current_node,
)
from chiffon.executor.replay.capture import CaptureStore, construct
from chiffon.executor.replay.normalize import Divergence, Step, first_divergence, steps
from chiffon.executor.replay.recorded import RecordedRun
from chiffon.executor.replay.steps import direct

REPLAY_ACTOR = Actor.service("replay")
_ENVELOPES: dict[type[Any], Any] = {}  # Envelope[Model] per payload model
UNLIMITED = 1 << 62


class ReplayHorizon(RunCancelledSignal):
    """The record ends here (a run cancelled, or waiting): the replay stops too."""


@dataclass(frozen=True)
class Verdict:
    """One run's replay: whether every decision was the same, and if not, the first
    that was not."""

    run_id: str
    workflow: str
    version: int
    nodes: int  # node executions replayed
    divergence: Divergence | None
    note: str | None = None  # why the replay stopped early, when it did

    @property
    def same(self) -> bool:
        return self.divergence is None


class ReplayExecution(RunExecution):
    """A ``RunExecution`` whose outside world is the record: approvals are the recorded
    decisions, retries do not wait, and work the record never reached stops the run."""

    def __init__(self, record: RecordedRun, asks: Asks, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record
        self.asks = asks
        self.horizon: str | None = None
        self.nodes = 0  # node executions replayed

    def event(self, payload: Any) -> Envelope[Any]:
        """``payload`` as this run's event, its envelope not validated again: its fields
        are the payload's own (validated when it was made), the run's id and the replay's
        actor, and nothing stores it. Validating it took a tenth of a replayed node, and
        pydantic's ``model_construct`` (a loop over the fields' aliases and defaults) 5%
        more: every field is given here, so the instance is made as it makes one."""
        envelope_type = _ENVELOPES.get(type(payload))
        if envelope_type is None:
            envelope_type = _ENVELOPES[type(payload)] = Envelope[type(payload)]  # type: ignore[misc]
        run_id = self.run.run_id
        return construct(  # type: ignore[no-any-return]
            envelope_type,
            {
                "event_id": uuid7(),
                "type": payload.event_type,
                "schema_version": payload.schema_version,
                "aggregate": payload.aggregate,
                "aggregate_id": run_id,
                "occurred_at": datetime.now(UTC),
                "correlation_id": run_id,
                "causation_id": None,
                "actor": self.actor,
                "trace": self.trace,
                "payload": payload,
            },
        )

    def next_iteration(self, node_id: str) -> int:
        iteration = super().next_iteration(node_id)
        self.nodes += 1
        current_node.set((node_id, iteration))  # whose asks the answers are for
        return iteration

    async def append(
        self, payloads: list[Any], *, check_cancel: bool = True, capped: bool = True
    ) -> None:
        if not self.record.ended:
            for payload in payloads:
                p = payload.payload if isinstance(payload, Envelope) else payload
                if (
                    isinstance(p, ev.NodeStarted)
                    and (p.node_id, p.iteration, p.attempt) not in self.record.started
                ):
                    self.horizon = f"the record ends before {p.node_id} (iteration {p.iteration})"
                    raise ReplayHorizon(self.horizon)
        await super().append(payloads, check_cancel=check_cancel, capped=capped)

    async def sleep(self, seconds: float) -> None:
        return None  # a retry's backoff: nothing to wait for

    async def wait_approval(self, node_id: str, iteration: int) -> tuple[ev.ApprovalDecided, str]:
        decided = self.record.decisions.get((node_id, iteration))
        if decided is None:
            self.horizon = f"{node_id} (iteration {iteration}) was still waiting for a decision"
            raise ReplayHorizon(self.horizon)
        return decided

    async def _end(self, payload: Any, outcome: Outcome) -> Outcome:
        if self.horizon is not None or self.asks.unanswered is not None:
            return "suspended"  # the record's own end (if any) is not the engine's
        return await super()._end(payload, outcome)


@dataclass
class Counters:
    """What a replay asked the record (never the world): model calls and agent tasks."""

    model_calls: int = 0
    agent_tasks: int = 0


async def verify_run(
    record: RecordedRun,
    workflow: LoadedWorkflow,
    counters: Counters | None = None,
    *,
    through_langgraph: bool = False,
) -> Verdict:
    """Replay ``record`` with ``workflow`` (its own version) and compare (see the module).

    The compiled graph's nodes and routers are stepped by ``steps.DirectGraph``, about
    twice as fast as LangGraph's loop; ``through_langgraph`` runs them through LangGraph
    itself (as does a graph ``DirectGraph`` cannot step)."""
    stepped = None if through_langgraph else direct(workflow.graph)
    if stepped is not None:
        workflow = LoadedWorkflow(spec=workflow.spec, digest=workflow.digest, graph=stepped)
    store = cast(EventStore, CaptureStore())
    key = AggregateKey("run", record.run_id)
    state = RunState(record.run_id)
    for envelope, _ in record.prefix:
        result = await store.append(key, [envelope], state.version)
        state = evolve(state, envelope, result.sequences[0])
    asks = Asks()
    models = RecordedModels(record, asks)
    agents = RecordedAgents(record, asks)
    execution = ReplayExecution(
        record,
        asks,
        store=store,
        workflow=workflow,
        run=state,
        actor=REPLAY_ACTOR,
        llm=models,
        outputs=OutputStore(store, "replay"),
        inline_output_limit=UNLIMITED,
    )
    dispatch = AgentDispatch(directory=RecordedDirectory(record, asks), client=agents)  # type: ignore[arg-type]
    token = install(dispatch)
    try:
        await execution.execute()
    finally:
        token.var.reset(token)
    if counters is not None:
        counters.model_calls += models.calls
        counters.agent_tasks += agents.tasks
    produced, _ = await store.read_aggregate(key)
    replayed = steps([(e.envelope, None) for e in produced])  # its own positions mean nothing
    note = execution.horizon
    unanswered = asks.unanswered
    if unanswered is not None:
        # The engine asked for what the run never asked: that ask is where it diverged.
        lane = unanswered.node[0] if unanswered.node else ""
        replayed.append(Step("unrecorded ask", lane, unanswered.what))
        note = unanswered.what
    open_end = not record.ended and execution.horizon is not None
    return Verdict(
        run_id=record.run_id,
        workflow=record.request.workflow,
        version=record.request.version,
        nodes=execution.nodes,
        divergence=first_divergence(steps(list(record.events)), replayed, open_end=open_end),
        note=note,
    )
