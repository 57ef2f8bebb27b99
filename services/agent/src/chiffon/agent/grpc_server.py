"""The agent's gRPC server: mapping only, wire <-> AgentRuntime.

Execute and Cancel need `authorization: Bearer <task token>` signed by the executor for
this agent and this task (chiffon.agentproto.auth), and so does every task sent on a
Session (the token in the message); Describe and the standard health service need none
(they reveal what the registry already shows).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from chiffon.agent.application import AgentRuntime
from chiffon.agent.tasks import AtCapacity, RunningTask
from chiffon.agentproto.auth import TaskTokenRefused, verify_task_token_with_key
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.core.logging import get_logger

log = get_logger(__name__)

MAX_TASK_ID = 512


async def _forward(
    task: RunningTask, updates: asyncio.Queue[agent_pb2.SessionUpdate | None]
) -> None:
    async for update in task.follow():
        updates.put_nowait(agent_pb2.SessionUpdate(task_id=task.task_id, update=update))


class AgentService(agent_pb2_grpc.AgentServicer):
    def __init__(self, runtime: AgentRuntime, executor_key: Ed25519PublicKey) -> None:
        self._runtime = runtime
        self._key = executor_key

    def _refusal(self, token: str, task_id: str) -> agent_pb2.Refusal | None:
        """Why this task may not run here (None: it may): a task id and a valid token from
        the executor, for this agent and this task, are required."""
        if not task_id or len(task_id) > MAX_TASK_ID:
            return agent_pb2.Refusal(code="INVALID_ARGUMENT", message="task_id is required")
        if not token:
            return agent_pb2.Refusal(
                code="UNAUTHENTICATED", message="a task token from the executor is required"
            )
        try:
            verify_task_token_with_key(
                self._key, token, agent_id=self._runtime.identity.agent_id, task_id=task_id
            )
        except TaskTokenRefused as refused:
            log.warning("agent.call_refused", task_id=task_id[:MAX_TASK_ID], reason=refused.reason)
            return agent_pb2.Refusal(code="UNAUTHENTICATED", message=refused.reason)
        return None

    async def _authorize(self, context: grpc.aio.ServicerContext, task_id: str) -> None:  # type: ignore[type-arg]
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer":
                    token = ""
        refusal = self._refusal(token.strip(), task_id)
        if refusal is not None:
            await context.abort(getattr(grpc.StatusCode, refusal.code), refusal.message)

    async def Execute(
        self,
        request: agent_pb2.ExecuteRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[agent_pb2.ExecuteUpdate]:
        await self._authorize(context, request.task_id)
        traceparent = next(
            (v for k, v in context.invocation_metadata() or () if k == "traceparent"), None
        )
        try:
            task = self._runtime.execute(
                request, traceparent if isinstance(traceparent, str) else None
            )
        except AtCapacity as full:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
            return
        if isinstance(task, agent_pb2.TaskResult):
            yield agent_pb2.ExecuteUpdate(result=task)
            return
        async for update in task.follow():
            yield update

    async def Cancel(
        self,
        request: agent_pb2.CancelRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> agent_pb2.CancelReply:
        await self._authorize(context, request.task_id)
        return agent_pb2.CancelReply(
            was_running=self._runtime.cancel(request.task_id, request.reason[:1000])
        )

    async def Session(
        self,
        requests: AsyncIterator[agent_pb2.SessionRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[agent_pb2.SessionUpdate]:
        """Tasks in, their updates out, over one stream (see the proto). A task's run does
        not depend on the session: when the executor goes away its tasks go on, and the
        next executor attaches to them by task id."""
        updates: asyncio.Queue[agent_pb2.SessionUpdate | None] = asyncio.Queue()
        followers: set[asyncio.Task[None]] = set()
        reader = asyncio.create_task(self._read_session(requests, updates, followers))
        try:
            while (update := await updates.get()) is not None:
                yield update
            await reader  # its failure (a broken request stream) ends the call with it
        finally:
            reader.cancel()
            for follower in followers:
                follower.cancel()

    async def _read_session(
        self,
        requests: AsyncIterator[agent_pb2.SessionRequest],
        updates: asyncio.Queue[agent_pb2.SessionUpdate | None],
        followers: set[asyncio.Task[None]],
    ) -> None:
        try:
            async for message in requests:
                task_id = message.execute.task_id
                refusal = self._refusal(message.token, task_id)
                if refusal is None:
                    try:
                        task = self._runtime.execute(message.execute, message.traceparent or None)
                    except AtCapacity as full:
                        refusal = agent_pb2.Refusal(code="RESOURCE_EXHAUSTED", message=str(full))
                if refusal is not None:
                    updates.put_nowait(agent_pb2.SessionUpdate(task_id=task_id, refused=refusal))
                elif isinstance(task, agent_pb2.TaskResult):
                    updates.put_nowait(
                        agent_pb2.SessionUpdate(
                            task_id=task_id, update=agent_pb2.ExecuteUpdate(result=task)
                        )
                    )
                else:
                    follower = asyncio.create_task(_forward(task, updates))
                    followers.add(follower)
                    follower.add_done_callback(followers.discard)
            # The executor sends no more: the session ends once every task has its result.
            while followers:
                await asyncio.wait(set(followers))
        finally:
            updates.put_nowait(None)

    async def Describe(
        self,
        request: agent_pb2.DescribeRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> agent_pb2.AgentDescription:
        return self._runtime.describe()


async def start_grpc_server(
    runtime: AgentRuntime, executor_key: Ed25519PublicKey, *, host: str, port: int
) -> tuple[grpc.aio.Server, HealthServicer, int]:
    """Serve the agent and health services; the port bound (port 0 picks one)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 4 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    agent_pb2_grpc.add_AgentServicer_to_server(AgentService(runtime, executor_key), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not listen on {host}:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set("chiffon.agent.v1.Agent", health_pb2.HealthCheckResponse.SERVING)
    return server, health, bound
