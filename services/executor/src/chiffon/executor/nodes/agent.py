"""The ``agent`` node: one attempt of a task on an agent.

The task is rendered, an agent chosen (``agents.routing``: capabilities, labels and
resources first, then the score), the choice and its reasons recorded
(``run.agent_task.assigned``), and the task sent over gRPC with a token signed for that
agent and task. The result is recorded (``run.agent_task.finished``: ok, exit code, what
the task used) and becomes the node's outputs: ``{stdout, stderr, exit_code}`` under the
node's id, or the fields ``output`` picks.

A command that exits non-zero fails the attempt (retried per the node's policy). An agent
that cannot be reached, or whose stream breaks mid-task, is marked unreachable here and
the attempt fails as ``interrupted``: the next attempt goes to another capable agent. A
cancel of the run reaches the agent (``Cancel``).

The task's output lines are published live as they arrive (``LiveOutput``), on core
NATS, not stored: ``<namespace>.live.run.<run_id>.output``, which the gateway's SSE
forwards as ``event: output``. The stored result keeps the full output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

import pydantic
from google.protobuf import json_format

from chiffon.agentproto.v1 import agent_pb2
from chiffon.core.logging import get_logger
from chiffon.events.runs import AgentTaskAssigned, AgentTaskFinished, RunPaused
from chiffon.eventstore import AggregateKey, EventStore
from chiffon.executor.agents.client import AgentRefused, AgentUnreachable, TaskOutcome, to_struct
from chiffon.executor.agents.dispatch import AgentDispatch, current
from chiffon.executor.agents.routing import AgentView, Candidate, Requirement
from chiffon.executor.domain import INTERRUPTED
from chiffon.executor.nodes.context import (
    CapacityPause,
    Execution,
    NodeError,
    RunCancelledSignal,
    error_info,
    storable_text,
)
from chiffon.workflow import (
    AgentNode,
    TemplateError,
    WorkflowSpec,
    build_output_model,
    render_task,
)

# Tool errors no other attempt can cure (the agent said so); others are retried. A fence's
# refusal (forbidden), a limit hit (limit_exceeded) and a killed-after-its-time task
# (timeout) would only be refused, hit or killed again.
FINAL_TOOL_ERRORS = frozenset(
    {
        "not_allowed",
        "not_found",
        "invalid_arguments",
        "invalid_task",
        "unknown_tool",
        "forbidden",
        "limit_exceeded",
        "timeout",
        "http_client_error",
    }
)
# Argument names whose values never reach an event: the name says it holds a secret.
SECRET_NAME = re.compile(
    r"password|passwd|passphrase|secret|token|api[_-]?key|^auth$|authorization|credential"
    r"|private[_-]?key|cookie",
    re.IGNORECASE,
)
MASK = "***"
RECORDED_TEXT_CHARS = 4000  # a longer argument (a python snippet) is recorded cut
RECORDED_ITEMS = 100  # entries of one list or object recorded
# The agent's word for a command that ran and exited non-zero.
NONZERO_EXIT = frozenset({"", "nonzero_exit", "command_failed"})
TAIL = 1500  # characters of stderr quoted in a failed command's error
# Live output: lines are published at most this often (batched in between), each
# truncated to LIVE_LINE_BYTES, at most LIVE_LINES_PER_SECOND per task (the others are
# skipped: ``seq`` counts every line, so a gap shows it; the result has them all).
LIVE_FLUSH_SECONDS = 0.05
LIVE_LINE_BYTES = 4096
LIVE_LINES_PER_SECOND = 200

log = get_logger(__name__)


def live_subject(namespace: str, run_id: str) -> str:
    return f"{namespace}.live.run.{run_id}.output"


class LiveOutput:
    """One task's output lines to the run's live subject, as they arrive: JSON
    ``{node_id, attempt, task_id, stream, text, seq}`` per line, never stored (nobody
    listening, or a reconnect, loses them: the result holds the full output)."""

    def __init__(
        self, store: EventStore | None, run_id: str, request: agent_pb2.ExecuteRequest
    ) -> None:
        self.store = store
        self.subject = live_subject(store.streams.namespace, run_id) if store else ""
        self.node_id = request.node_id
        self.attempt = request.attempt
        self.task_id = request.task_id
        self.seq = 0
        self.pending: list[bytes] = []
        self._window = (0.0, 0)  # start of the current second, lines forwarded in it
        self._last_flush = 0.0
        self._flusher: asyncio.Task[None] | None = None

    def line(self, stream: str, text: str) -> None:
        if self.store is None:
            return
        self.seq += 1
        now = time.monotonic()
        start, count = self._window
        if now - start >= 1.0:
            start, count = now, 0
        if count >= LIVE_LINES_PER_SECOND:
            return
        self._window = (start, count + 1)
        raw = text.encode("utf-8", "replace")
        if len(raw) > LIVE_LINE_BYTES:
            text = raw[:LIVE_LINE_BYTES].decode("utf-8", "ignore") + "… (truncated)"
        message = {
            "node_id": self.node_id,
            "attempt": self.attempt,
            "task_id": self.task_id,
            "stream": stream,
            "text": storable_text(text),
            "seq": self.seq,
        }
        self.pending.append(json.dumps(message).encode())
        if self._flusher is None:
            delay = max(0.0, self._last_flush + LIVE_FLUSH_SECONDS - now)
            self._flusher = asyncio.create_task(self._flush_after(delay))

    async def _flush_after(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)  # batching: at most one flush per LIVE_FLUSH_SECONDS
        self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        self._last_flush = time.monotonic()
        if self.store is None:
            return
        try:
            for data in pending:
                await self.store.publish(self.subject, data)
        except Exception as error:  # noqa: BLE001 — live output is best effort
            log.warning("agent.live_output_failed", task_id=self.task_id, error=str(error))

    async def close(self) -> None:
        """Send what is pending now (before the result is recorded)."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()


def requirement(node: AgentNode) -> Requirement:
    resources = node.resources
    return Requirement(
        capabilities=tuple(node.requires),
        labels=dict(node.labels or {}),
        gpu_vram_gb=resources.gpu_vram_gb if resources else None,
        cpu_cores=resources.cpu_cores if resources else None,
    )


def task_id(run_id: str, node_id: str, iteration: int, attempt: int) -> str:
    return f"{run_id}:{node_id}:{iteration}:{attempt}"


def current_attempt(ctx: Execution, node_id: str) -> tuple[int, int]:
    """The (iteration, attempt) of the node's attempt under way: the one started and
    not yet ended (a node runs one iteration at a time)."""
    found = [
        (iteration, record.open_attempt)
        for (nid, iteration), record in ctx.run.nodes.items()
        if nid == node_id and record.open_attempt is not None
    ]
    if not found:
        return 1, 1
    iteration, attempt = max(found)
    return iteration, attempt or 1


def attempt_timeout(ctx: Execution, node: AgentNode) -> float:
    """The attempt's timeout in seconds (0: the agent's default), sent for the agent to
    enforce as well: the node's, else the workflow's default, as the executor enforces."""
    spec = getattr(getattr(ctx, "workflow", None), "spec", None)
    timeout = spec.effective_timeout(node) if isinstance(spec, WorkflowSpec) else node.timeout
    return float(timeout or 0.0)


def build_request(
    run_id: str,
    node: AgentNode,
    task: dict[str, Any],
    iteration: int,
    attempt: int,
    timeout: float = 0.0,
) -> agent_pb2.ExecuteRequest:
    arguments = dict(task)
    tool = arguments.pop("tool", None)
    if not isinstance(tool, str) or not tool:
        raise NodeError("invalid_task", f"{node.id}.task: no tool named", retryable=False)
    try:
        struct = to_struct(arguments)
    except ValueError as error:
        raise NodeError("invalid_task", f"{node.id}.task: {error}", retryable=False) from None
    return agent_pb2.ExecuteRequest(
        task_id=task_id(run_id, node.id, iteration, attempt),
        run_id=run_id,
        node_id=node.id,
        attempt=attempt,
        tool=tool,
        arguments=struct,
        timeout_seconds=timeout,
    )


def recorded_arguments(value: Any, depth: int = 0) -> Any:
    """The task's arguments as its event records them: a value under a secret-looking
    name (``password``, ``api_key``, ``token``...) masked, at any depth, long texts cut
    and large collections truncated, so the audit trail shows the call without its
    secrets and always fits the event."""
    if depth > 8:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:RECORDED_ITEMS]
        return {
            str(key)[:200]: MASK
            if SECRET_NAME.search(str(key))
            else recorded_arguments(item, depth + 1)
            for key, item in items
        }
    if isinstance(value, list):
        return [recorded_arguments(item, depth + 1) for item in value[:RECORDED_ITEMS]]
    if isinstance(value, str):
        text = value if len(value) <= RECORDED_TEXT_CHARS else value[:RECORDED_TEXT_CHARS] + "…"
        return storable_text(text)
    return value


def result_fields(outcome: TaskOutcome) -> dict[str, Any]:
    """The tool's result, with ``exit_code``. A result with no fields of its own (an agent
    that sent only lines) gets ``stdout`` and ``stderr`` made of its lines; a tool that
    answers with fields (python, http, sql, ansible...) is taken as it answered: its lines
    were streamed live, and a long play's log is not copied into the node's outputs."""
    output = outcome.output
    if not output:
        for stream in ("stdout", "stderr"):
            output[stream] = "".join(
                text if text.endswith("\n") else text + "\n"
                for kind, text in outcome.lines
                if kind == stream
            )
    code = output.get("exit_code", outcome.result.exit_code)
    output["exit_code"] = int(code) if isinstance(code, (int, float)) else outcome.result.exit_code
    return output


def node_outputs(node: AgentNode, fields: dict[str, Any]) -> dict[str, Any]:
    if not node.output:
        return {node.id: fields}
    try:
        model = build_output_model(node.id, node.output, extra="ignore")
        picked: dict[str, Any] = model.model_validate(fields).model_dump(by_alias=True)
    except pydantic.ValidationError as error:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
            for e in error.errors(include_url=False)[:5]
        )
        raise NodeError(
            "invalid_output", f"the result does not match the output: {detail}", retryable=False
        ) from None
    return picked


def failure(outcome: TaskOutcome, fields: dict[str, Any]) -> NodeError:
    """The attempt's error for a result that is not ok."""
    result = outcome.result
    kind = result.error_type
    if kind in FINAL_TOOL_ERRORS:
        return NodeError(kind, result.error_message or kind, retryable=False)
    if kind in NONZERO_EXIT:
        stderr = str(fields.get("stderr") or "").strip()
        message = f"the command exited with {fields.get('exit_code')}"
        return NodeError("command_failed", message + (f": {stderr[-TAIL:]}" if stderr else ""))
    return NodeError(kind, result.error_message or kind)


async def agent_attempt(ctx: Execution, node: AgentNode, state: dict[str, Any]) -> dict[str, Any]:
    try:
        task = render_task(node.task, state)
    except TemplateError as error:
        raise NodeError("template_error", f"{node.id}.task: {error}", retryable=False) from None
    dispatch = current()
    need = requirement(node)
    if dispatch is None:
        raise NodeError("no_agent", f"no agent available for {need.describe()}")
    iteration, attempt = current_attempt(ctx, node.id)
    timeout = attempt_timeout(ctx, node)
    request = build_request(ctx.run.run_id, node, task, iteration, attempt, timeout)
    chosen = await orphaned_task(ctx, dispatch, node.id, iteration, attempt, request)
    if chosen is None:
        chosen = await choose(ctx, dispatch, node, need)
    return await run_on(ctx, dispatch, node, chosen, request, iteration)


async def orphaned_task(
    ctx: Execution,
    dispatch: AgentDispatch,
    node_id: str,
    iteration: int,
    attempt: int,
    request: agent_pb2.ExecuteRequest,
) -> Candidate | None:
    """The agent still running (or having run) the previous attempt's task, when the
    executor that sent it stopped before its result: that task is attached to again
    (same task id: the agent runs a task once and replays its result) rather than run a
    second time. ``request`` takes that task's id. None when there is no such task."""
    previous = ctx.run.nodes.get((node_id, iteration))
    store = dispatch.directory.store
    if attempt < 2 or previous is None or store is None:
        return None
    lost = [f for f in previous.failures if f.attempt == attempt - 1]
    if not lost or lost[-1].error.type != INTERRUPTED:
        return None
    events, _ = await store.read_aggregate(AggregateKey("run", ctx.run.run_id))
    assigned: AgentTaskAssigned | None = None
    ended: set[str] = set()
    for recorded in events:
        payload = recorded.payload
        if isinstance(payload, AgentTaskFinished):
            ended.add(payload.task_id)
        elif (
            isinstance(payload, AgentTaskAssigned)
            and payload.node_id == node_id
            and payload.iteration == iteration
            and payload.attempt == attempt - 1
        ):
            assigned = payload
    if assigned is None or assigned.task_id in ended:
        return None
    agent = next(
        (a for a in dispatch.directory.agents.values() if a.agent_id == assigned.agent_id), None
    )
    if agent is None or dispatch.directory.local_view(agent.agent_id).unreachable:
        return None
    request.task_id = assigned.task_id
    reason = f"attached to task {assigned.task_id}, sent before the executor stopped"
    return Candidate(agent, assigned.score or 0.0, (reason,))


async def choose(
    ctx: Execution, dispatch: AgentDispatch, node: AgentNode, need: Requirement
) -> Candidate:
    """The best agent for the task now.

    When none can take it, the run pauses (``CapacityPause``): it records
    ``run.paused {reason: no_capacity}`` with what the task needs, holds nothing, and is
    resumed by event when a capable agent registers, comes back or frees capacity
    (``agents.resumer``). A node with ``capacity_timeout`` waits that long instead (here,
    holding the run), then fails with ``no_agent``."""
    directory = dispatch.directory
    await directory.caught_up(dispatch.catch_up_timeout)
    change = directory.watch()
    routing = directory.route(need)
    if routing.best is None and node.capacity_timeout:
        deadline = time.monotonic() + node.capacity_timeout
        while routing.best is None and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await ctx.interruptible(asyncio.wait_for(change.wait(), left))
            change = directory.watch()
            routing = directory.route(need)
    best = routing.best
    if best is None and not node.capacity_timeout:
        raise CapacityPause(
            RunPaused(
                reason="no_capacity",
                node_id=node.id,
                requires=need.capabilities,
                labels=dict(need.labels),
                gpu_vram_gb=need.gpu_vram_gb,
                cpu_cores=need.cpu_cores,
            )
        )
    if best is None:
        raise NodeError(
            "no_agent", f"no agent available for {need.describe()} ({routing.explain()})"
        )
    return best


async def watched(
    dispatch: AgentDispatch,
    agent: AgentView,
    request: agent_pb2.ExecuteRequest,
    live: LiveOutput | None = None,
    trace: str | None = None,
) -> TaskOutcome:
    """The task's outcome, unless the registry records the agent offline first (its
    heartbeats stopped: a host gone without closing its connections looks like this):
    then ``AgentUnreachable``, and the agent is told to stop the task, if it hears."""
    gone = dispatch.directory.went_offline(agent.agent_id)
    on_line = live.line if live is not None else None
    call = asyncio.ensure_future(
        dispatch.client.execute(agent.agent_id, agent.address, request, on_line, trace=trace)
    )
    offline = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait({call, offline}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        call.cancel()
        raise
    finally:
        offline.cancel()
    if call.done():
        return call.result()
    call.cancel()
    with contextlib.suppress(Exception):
        await dispatch.client.cancel(agent.agent_id, agent.address, request.task_id, "offline")
    raise AgentUnreachable(f"agent {agent.agent_id} went offline (its heartbeats stopped)")


async def run_on(
    ctx: Execution,
    dispatch: AgentDispatch,
    node: AgentNode,
    chosen: Candidate,
    request: agent_pb2.ExecuteRequest,
    iteration: int,
) -> dict[str, Any]:
    agent = chosen.agent
    directory, client = dispatch.directory, dispatch.client
    await ctx.append(
        [
            AgentTaskAssigned(
                task_id=request.task_id,
                node_id=node.id,
                agent_id=agent.agent_id,
                agent_name=agent.name,
                attempt=request.attempt,
                iteration=iteration,
                address=agent.address,
                score=chosen.score,
                reasons=[storable_text(r[:300]) for r in chosen.reasons],
                tool=request.tool[:63],
                arguments=recorded_arguments(json_format.MessageToDict(request.arguments)),
            )
        ]
    )

    async def finished(ok: bool, error: NodeError | None, outcome: TaskOutcome | None) -> None:
        result = outcome.result if outcome is not None else None
        await ctx.append(
            [
                AgentTaskFinished(
                    task_id=request.task_id,
                    node_id=node.id,
                    ok=ok,
                    exit_code=None if result is None else result.exit_code,
                    error=None if error is None else error_info(error.kind, str(error), node.id),
                    attempt=request.attempt,
                    agent_id=agent.agent_id,
                    duration_ms=None if result is None else max(0.0, result.duration_ms),
                    cpu_seconds=None if result is None else max(0.0, result.cpu_seconds),
                    peak_memory_bytes=None
                    if result is None
                    else max(0.0, result.peak_memory_bytes),
                    gpu_memory_bytes=None if result is None else max(0.0, result.gpu_memory_bytes),
                )
            ],
            check_cancel=False,
        )

    directory.started(agent.agent_id)
    ok: bool | None = None
    latency: float | None = None
    live = LiveOutput(directory.store, ctx.run.run_id, request)
    try:
        try:
            try:
                outcome: TaskOutcome = await ctx.interruptible(
                    watched(dispatch, agent, request, live, trace=ctx.trace)
                )
            finally:
                await live.close()
        except RunCancelledSignal:
            await client.cancel(agent.agent_id, agent.address, request.task_id, "run cancelled")
            raise
        except asyncio.CancelledError:
            # The attempt timed out or the replica is stopping: stop the task too.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    client.cancel(agent.agent_id, agent.address, request.task_id, "stopped")
                )
            raise
        except AgentUnreachable as lost:
            directory.unreachable(agent.agent_id)
            await client.forget(agent.address)
            error = NodeError(
                INTERRUPTED, f"{lost} (not routed to from this executor until it is back)"
            )
            await finished(False, error, None)
            raise error from None
        except AgentRefused as refused:
            busy = refused.code.name == "RESOURCE_EXHAUSTED"
            error = NodeError(
                "agent_busy" if busy else "agent_refused", str(refused), retryable=busy
            )
            await finished(False, error, None)
            raise error from None
        latency = outcome.overhead_ms
        fields = result_fields(outcome)
        if not outcome.result.ok or fields["exit_code"] != 0:
            ok = False
            error = failure(outcome, fields)
            await finished(False, error, outcome)
            raise error
        ok = True
        await finished(True, None, outcome)
        return node_outputs(node, fields)
    finally:
        directory.finished(agent.agent_id, ok=ok, latency_ms=latency)
