"""What the replayed run asks the outside world, answered from its record: the model's
replies, the agents' results. Nothing here opens a connection.

Each answer is found by the node execution asking (``current_node``, set when the node
takes its iteration number) and the order of its asks, so parallel branches each get
their own. An ask the record has no answer for stops the replay (``Unrecorded``): the
engine went where the recorded run never went, which the comparison then reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf import json_format

from chiffon.agentproto.v1 import agent_pb2
from chiffon.events import runs as ev
from chiffon.executor.agents.client import AgentRefused, AgentUnreachable, TaskOutcome
from chiffon.executor.agents.routing import AgentView, Candidate, Routing
from chiffon.executor.models import ModelGateway, ModelReply, ModelRequest, ProviderError
from chiffon.executor.nodes import RunCancelledSignal
from chiffon.executor.replay.recorded import NodeKey, RecordedRun, reply_text

current_node: ContextVar[NodeKey | None] = ContextVar("chiffon_replay_node", default=None)
# ``run_on`` adds this to an unreachable agent's error; the recorded message has it too.
UNREACHABLE_SUFFIX = " (not routed to from this executor until it is back)"
COMMAND_FAILED = "the command exited with "


class Unrecorded(RunCancelledSignal):
    """The replay asked for something the record has no answer for: it stops there.
    (A cancel signal, so the engine stops the run cleanly rather than failing it.)"""

    def __init__(self, what: str, node: NodeKey | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.node = node


class Asks:
    """The first ask of a replay the record could not answer (None: every one was)."""

    def __init__(self) -> None:
        self.unanswered: Unrecorded | None = None

    def stop(self, what: str) -> Unrecorded:
        stop = Unrecorded(what, current_node.get())
        if self.unanswered is None:
            self.unanswered = stop
        return stop


class RecordedModels(ModelGateway):
    """A model gateway that answers each call with the recorded one (see the module)."""

    def __init__(self, run: RecordedRun, asks: Asks) -> None:
        super().__init__(offline_mode="always")
        self.record = run
        self.asks = asks
        self.asked: dict[NodeKey, int] = {}
        self.calls = 0

    def in_process(self, model: str) -> bool:
        # Answered here, in microseconds: no task is spent making the call interruptible.
        return True

    def complete(self, request: ModelRequest) -> Awaitable[ModelReply]:
        return self._answer(request)

    async def _answer(self, request: ModelRequest) -> ModelReply:
        node = current_node.get()
        if node is None:
            raise self.asks.stop(f"a call to {request.model} outside any node")
        index = self.asked.get(node, 0)
        self.asked[node] = index + 1
        recorded = self.record.calls.get(node, [])
        if index >= len(recorded):
            raise self.asks.stop(
                f"called {request.model} once more than the run recorded"
                f" ({len(recorded)} call(s) in iteration {node[1]})"
            )
        call = recorded[index]
        called = call.called
        self.calls += 1
        if not called.ok:
            raise ProviderError(
                called.model,
                called.error or "",
                kind=_failed_kind(call),
                provider=called.provider,
                retryable=_retryable(call),
            )
        return ModelReply(
            text=reply_text(call, node[0], request.response_format is not None),
            provider=called.provider,
            model=called.model,
            prompt_tokens=called.prompt_tokens,
            completion_tokens=called.completion_tokens,
            latency_ms=called.latency_ms,
            finish_reason=called.finish_reason,
        )


def _failed_kind(call: Any) -> str:
    outcome = call.outcome
    if isinstance(outcome, ev.NodeFailed):
        return outcome.error.type
    return "provider_error"


def _retryable(call: Any) -> bool:
    outcome = call.outcome
    if isinstance(outcome, ev.NodeFailed):
        return outcome.will_retry
    return True


class _Never:
    """An event that is never set (no agent of a replay goes offline, no agent joins)."""

    def is_set(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()  # until the task it watches ends and cancels this


class RecordedDirectory:
    """The agent directory a replay sees: for each task, the agent that took it."""

    store = None  # no live output, no orphaned task lookups

    def __init__(self, run: RecordedRun, asks: Asks) -> None:
        self.record = run
        self.asks = asks
        self.agents: dict[str, AgentView] = {}
        self.routed: dict[NodeKey, int] = {}

    async def caught_up(self, timeout: float) -> None:
        return None

    def watch(self) -> _Never:
        return _Never()

    def went_offline(self, agent_id: str) -> _Never:
        return _Never()

    def route(self, need: Any) -> Routing:
        node = current_node.get()
        assert node is not None
        attempt = self.routed.get(node, 0) + 1
        self.routed[node] = attempt
        task_id = f"{self.record.run_id}:{node[0]}:{node[1]}:{attempt}"
        task = self.record.tasks.get(task_id)
        if task is None:
            raise self.asks.stop(f"sent a task the run never sent (attempt {attempt})")
        assigned = task.assigned
        agent = AgentView(
            agent_id=assigned.agent_id,
            name=assigned.agent_name or assigned.agent_id,
            address=assigned.address or "",
        )
        return Routing((Candidate(agent, assigned.score or 0.0, tuple(assigned.reasons)),), {})

    def started(self, agent_id: str) -> None:
        return None

    def finished(self, agent_id: str, *, ok: bool | None, latency_ms: float | None) -> None:
        return None

    def unreachable(self, agent_id: str) -> None:
        return None


class RecordedAgents:
    """The agent client a replay sees: each task's recorded result."""

    def __init__(self, run: RecordedRun, asks: Asks) -> None:
        self.record = run
        self.asks = asks
        self.tasks = 0

    async def execute(
        self,
        agent_id: str,
        address: str,
        request: agent_pb2.ExecuteRequest,
        on_line: Any = None,
        *,
        trace: str | None = None,
    ) -> TaskOutcome:
        task = self.record.tasks.get(request.task_id)
        if task is None or task.finished is None:
            raise self.asks.stop(f"task {request.task_id} has no recorded result")
        self.tasks += 1
        finished = task.finished
        error = finished.error
        if error is not None and error.type == "interrupted":
            raise AgentUnreachable(error.message.removesuffix(UNREACHABLE_SUFFIX))
        if error is not None and error.type in ("agent_busy", "agent_refused"):
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if error.type == "agent_busy"
                else grpc.StatusCode.PERMISSION_DENIED
            )
            raise AgentRefused(code, error.message)
        result = agent_pb2.TaskResult(
            ok=finished.ok,
            exit_code=finished.exit_code or 0,
            duration_ms=finished.duration_ms or 0.0,
        )
        fields = _fields(task.outputs, request.node_id, finished)
        if error is not None:
            if error.type == "command_failed":
                result.error_type = "nonzero_exit"
            else:
                result.error_type = error.type
                result.error_message = error.message
        json_format.ParseDict(fields, result.output)
        return TaskOutcome(result=result, wall_ms=finished.duration_ms or 0.0)

    async def cancel(self, agent_id: str, address: str, task_id: str, reason: str) -> None:
        return None

    async def forget(self, address: str) -> None:
        return None


def _fields(
    outputs: dict[str, Any] | None, node_id: str, finished: ev.AgentTaskFinished
) -> dict[str, Any]:
    """The tool's result fields that give the node's recorded outputs (or, for a failed
    command, its recorded exit code and the stderr its error quotes)."""
    if outputs is not None:
        whole = outputs.get(node_id)
        if len(outputs) == 1 and isinstance(whole, dict):
            return dict(whole)
        return dict(outputs)
    fields: dict[str, Any] = {"exit_code": finished.exit_code or 0}
    error = finished.error
    if error is not None and error.type == "command_failed":
        message = error.message
        prefix = f"{COMMAND_FAILED}{finished.exit_code}: "
        fields["stderr"] = message[len(prefix) :] if message.startswith(prefix) else ""
    return fields
