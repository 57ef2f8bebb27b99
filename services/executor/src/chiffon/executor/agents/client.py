"""The executor's gRPC client of agents: ``Execute`` (streamed) and ``Cancel``.

Every call carries a task token signed with the executor's key
(``chiffon.agentproto.auth``), naming the agent and the task, as
``authorization: Bearer <token>`` metadata. One channel per agent address, kept open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from chiffon.agentproto.auth import TaskSigner
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.core.logging import get_logger

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
        data: dict[str, Any] = json_format.MessageToDict(self.result.output)
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

    def _metadata(
        self, agent_id: str, task_id: str, trace: str | None = None
    ) -> list[tuple[str, str]]:
        """The call's metadata: the signed token, and the run's trace context (the agent's
        span for the task continues it)."""
        metadata = [("traceparent", trace)] if trace else []
        if self._signer is None:
            return metadata
        token = self._signer.sign(agent_id=agent_id, task_id=task_id, ttl=self.token_ttl)
        return [("authorization", f"Bearer {token}"), *metadata]

    def _stub(self, address: str) -> agent_pb2_grpc.AgentAsyncStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return agent_pb2_grpc.AgentStub(channel)

    async def forget(self, address: str) -> None:
        """Close the channel to ``address`` (its agent was lost): the next call dials anew."""
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
        result; ``AgentRefused`` when it refuses the call."""
        started = time.perf_counter()
        lines: list[tuple[str, str]] = []
        result: agent_pb2.TaskResult | None = None
        call = self._stub(address).Execute(
            request, metadata=self._metadata(agent_id, request.task_id, trace)
        )
        try:
            async for update in call:
                kind = update.WhichOneof("update")
                if kind == "line":
                    stderr = update.line.stream == agent_pb2.OutputLine.STREAM_STDERR
                    stream = "stderr" if stderr else "stdout"
                    if len(lines) < MAX_LINES:
                        lines.append((stream, update.line.text))
                    if on_line is not None:
                        on_line(stream, update.line.text)
                elif kind == "result" and result is None:
                    result = update.result
                    wall_ms = (time.perf_counter() - started) * 1000
        except grpc.aio.AioRpcError as error:
            if result is None:
                code = error.code()
                detail = error.details() or code.name
                if code in LOST:
                    raise AgentUnreachable(f"agent {agent_id} at {address}: {detail}") from None
                raise AgentRefused(code, f"agent {agent_id} refused the task: {detail}") from None
        except asyncio.CancelledError:
            call.cancel()
            raise
        if result is None:
            raise AgentUnreachable(f"agent {agent_id} at {address} ended the task without a result")
        return TaskOutcome(result, lines, wall_ms)

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
