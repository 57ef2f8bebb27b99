"""The executor's gRPC client of agents: tasks over a ``Session``, and ``Cancel``.

Every task carries a task token signed with the executor's key
(``chiffon.agentproto.auth``), naming the agent and the task. One channel per agent
address, kept open, and on it one ``Session`` stream that carries every task sent to that
agent: a message on an open stream costs each side about half the CPU of an RPC per task.
An agent without ``Session`` (UNIMPLEMENTED) gets one streamed ``Execute`` per task, the
token as ``authorization: Bearer <token>`` metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace as trace_api
from opentelemetry.trace import SpanKind

from chiffon.agentproto.auth import TaskSigner
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.agentproto.values import whole_numbers
from chiffon.core.logging import get_logger
from chiffon.core.telemetry import current_traceparent
from chiffon.core.tracing import SpanScope

log = get_logger(__name__)

# gRPC codes meaning the agent (or the way to it) is gone, not that it refused the task.
LOST = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
)
CANCEL_TIMEOUT = 3.0
MAX_LINES = 10_000  # output lines kept per task (the result carries the full output)


class AgentUnreachable(Exception):
    """The agent could not be reached, or its stream broke before the result."""


class AgentRefused(Exception):
    """The agent refused the call (credentials, arguments, busy): ``code`` says which."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class TaskOutcome:
    """An ``Execute`` to its result: the result, the output lines and the timings."""

    result: agent_pb2.TaskResult
    lines: list[tuple[str, str]] = field(default_factory=list)  # (stdout|stderr, text)
    wall_ms: float = 0.0

    @property
    def output(self) -> dict[str, Any]:
        data: dict[str, Any] = whole_numbers(json_format.MessageToDict(self.result.output))
        return data

    @property
    def overhead_ms(self) -> float:
        """Round-trip time beyond what the task itself took on the agent."""
        return max(0.0, self.wall_ms - self.result.duration_ms)


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """``value`` as a protobuf Struct (``ValueError`` if it holds no JSON value)."""
    struct = struct_pb2.Struct()
    try:
        struct.update(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the task's arguments are not JSON values: {error}") from None
    return struct


class AgentClient:
    def __init__(self, signing_key: bytes | None, *, token_ttl: float = 60.0) -> None:
        self.signing_key = signing_key
        # Loaded once: parsing the PEM per call cost as much as the signature.
        self._signer = None if signing_key is None else TaskSigner(signing_key)
        self.token_ttl = token_ttl
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._sessions: dict[str, _Session] = {}
        self._without_sessions: set[str] = set()  # agents that answered UNIMPLEMENTED

    def _metadata(
        self, agent_id: str, task_id: str, trace: str | None = None
    ) -> list[tuple[str, str]]:
        """The call's metadata: the signed token, and the run's trace context (the agent's
        span for the task continues it)."""
        metadata = [("traceparent", trace)] if trace else []
        if self._signer is None:
            return metadata
        return [("authorization", f"Bearer {self._token(agent_id, task_id)}"), *metadata]

    def _token(self, agent_id: str, task_id: str) -> str:
        assert self._signer is not None
        return self._signer.sign(agent_id=agent_id, task_id=task_id, ttl=self.token_ttl)

    def _stub(self, address: str) -> agent_pb2_grpc.AgentAsyncStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return agent_pb2_grpc.AgentStub(channel)

    async def forget(self, address: str) -> None:
        """Close the channel to ``address`` (its agent was lost): the next call dials anew."""
        session = self._sessions.pop(address, None)
        if session is not None:
            session.close()
        self._without_sessions.discard(address)
        channel = self._channels.pop(address, None)
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    async def execute(
        self,
        agent_id: str,
        address: str,
        request: agent_pb2.ExecuteRequest,
        on_line: Callable[[str, str], None] | None = None,
        *,
        trace: str | None = None,
    ) -> TaskOutcome:
        """Run the task on the agent and wait for its one result. ``on_line(stream, text)``
        hears each output line as it arrives (stream: stdout or stderr).

        ``AgentUnreachable`` when the agent cannot be reached or the stream ends without a
        result; ``AgentRefused`` when it refuses the call.

        The call is a client span, a child of the current one (else of ``trace``); the
        agent's own span continues it (the traceparent travels with the task)."""
        with SpanScope(
            f"agent task {request.tool}",
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "chiffon.agent.v1.Agent",
                "server.address": address,
                "chiffon.agent_id": agent_id,
                "chiffon.task_id": request.task_id,
            },
            parent=None if trace_api.get_current_span().get_span_context().is_valid else trace,
        ) as span:
            outcome = await self._execute(
                agent_id, address, request, on_line, current_traceparent() or trace
            )
            span.set_attribute("chiffon.ok", outcome.result.ok)
            return outcome

    async def _execute(
        self,
        agent_id: str,
        address: str,
        request: agent_pb2.ExecuteRequest,
        on_line: Callable[[str, str], None] | None,
        trace: str | None,
    ) -> TaskOutcome:
        started = time.perf_counter()
        if address in self._without_sessions:
            return await self._execute_call(agent_id, address, request, on_line, trace, started)
        session = self._sessions.get(address)
        if session is None or session.broken is not None:
            self._stub(address)  # the channel
            session = self._sessions[address] = _Session(self._channels[address])
        token = "" if self._signer is None else self._token(agent_id, request.task_id)
        updates = session.send(
            agent_pb2.SessionRequest(token=token, traceparent=trace or "", execute=request)
        )
        outcome = _Outcome(on_line)
        try:
            while (update := await updates.get()) is not None:
                if update.HasField("refused"):
                    code = getattr(grpc.StatusCode, update.refused.code, grpc.StatusCode.UNKNOWN)
                    raise AgentRefused(
                        code, f"agent {agent_id} refused the task: {update.refused.message}"
                    )
                if outcome.take(update.update):
                    return outcome.done(started)
        finally:
            session.forget(request.task_id)
        broken = session.broken
        assert broken is not None
        if broken.code() == grpc.StatusCode.UNIMPLEMENTED:
            self._without_sessions.add(address)
            return await self._execute_call(agent_id, address, request, on_line, trace, started)
        raise _call_error(agent_id, address, broken)

    async def _execute_call(
        self,
        agent_id: str,
        address: str,
        request: agent_pb2.ExecuteRequest,
        on_line: Callable[[str, str], None] | None,
        trace: str | None,
        started: float,
    ) -> TaskOutcome:
        outcome = _Outcome(on_line)
        call = self._stub(address).Execute(
            request, metadata=self._metadata(agent_id, request.task_id, trace)
        )
        try:
            async for update in call:
                if outcome.take(update):
                    return outcome.done(started)
        except grpc.aio.AioRpcError as error:
            raise _call_error(agent_id, address, error) from None
        except asyncio.CancelledError:
            call.cancel()
            raise
        raise AgentUnreachable(f"agent {agent_id} at {address} ended the task without a result")

    async def cancel(self, agent_id: str, address: str, task_id: str, reason: str) -> bool:
        """Ask the agent to stop the task (best effort: False if it could not be told)."""
        try:
            reply = await self._stub(address).Cancel(
                agent_pb2.CancelRequest(task_id=task_id, reason=reason[:500]),
                metadata=self._metadata(agent_id, task_id),
                timeout=CANCEL_TIMEOUT,
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "agent.cancel_failed", agent_id=agent_id, task_id=task_id, error=error.details()
            )
            return False
        return bool(reply.was_running)

    async def close(self) -> None:
        for address in list(self._channels):
            await self.forget(address)


def _call_error(agent_id: str, address: str, error: grpc.aio.AioRpcError) -> Exception:
    code = error.code()
    detail = error.details() or code.name
    if code in LOST:
        return AgentUnreachable(f"agent {agent_id} at {address}: {detail}")
    return AgentRefused(code, f"agent {agent_id} refused the task: {detail}")


class _Outcome:
    """A task's updates gathered into its TaskOutcome."""

    def __init__(self, on_line: Callable[[str, str], None] | None) -> None:
        self.on_line = on_line
        self.lines: list[tuple[str, str]] = []
        self.result: agent_pb2.TaskResult | None = None

    def take(self, update: agent_pb2.ExecuteUpdate) -> bool:
        """Take one update; True once it is the result."""
        kind = update.WhichOneof("update")
        if kind == "line":
            stderr = update.line.stream == agent_pb2.OutputLine.STREAM_STDERR
            stream = "stderr" if stderr else "stdout"
            if len(self.lines) < MAX_LINES:
                self.lines.append((stream, update.line.text))
            if self.on_line is not None:
                self.on_line(stream, update.line.text)
            return False
        if kind == "result":
            self.result = update.result
            return True
        return False

    def done(self, started: float) -> TaskOutcome:
        assert self.result is not None
        return TaskOutcome(self.result, self.lines, (time.perf_counter() - started) * 1000)


Updates = asyncio.Queue[agent_pb2.SessionUpdate | None]


class _Session:
    """One ``Session`` stream to an agent: tasks go out as messages, updates come back
    to the task they name. When the stream breaks, every task waiting on it hears None
    and ``broken`` says why; the next task opens a new session."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._outgoing: asyncio.Queue[agent_pb2.SessionRequest | None] = asyncio.Queue()
        self._waiting: dict[str, Updates] = {}
        self.broken: grpc.aio.AioRpcError | None = None
        call = channel.stream_stream(
            "/chiffon.agent.v1.Agent/Session",
            request_serializer=agent_pb2.SessionRequest.SerializeToString,
            response_deserializer=agent_pb2.SessionUpdate.FromString,
        )(self._requests())
        self._call = call
        self._reader = asyncio.create_task(self._read(), name="agent-session")

    def send(self, request: agent_pb2.SessionRequest) -> Updates:
        """Send a task; its updates arrive on the queue returned, None when the session
        broke before its result."""
        updates: Updates = asyncio.Queue()
        self._waiting[request.execute.task_id] = updates
        self._outgoing.put_nowait(request)
        return updates

    def forget(self, task_id: str) -> None:
        self._waiting.pop(task_id, None)

    def close(self) -> None:
        self._outgoing.put_nowait(None)
        self._call.cancel()

    async def _requests(self) -> AsyncIterator[agent_pb2.SessionRequest]:
        while (request := await self._outgoing.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for update in self._call:
                updates = self._waiting.get(update.task_id)
                if updates is not None:
                    updates.put_nowait(update)
        except grpc.aio.AioRpcError as error:
            self.broken = error
        finally:
            if self.broken is None:
                # The agent ended the session (it is stopping), or we closed it: as lost
                # as a broken stream to the tasks still waiting.
                self.broken = grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details="the session to the agent ended",
                )
            for updates in self._waiting.values():
                updates.put_nowait(None)
