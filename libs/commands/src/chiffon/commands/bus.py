"""Sending and serving commands by request-reply through the event store's connection
(queue groups spread the load over a service's replicas)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pydantic
from opentelemetry.trace import SpanKind

from chiffon.commands.model import Command, CommandReply, Refusal, command_subject
from chiffon.core.logging import get_logger
from chiffon.core.telemetry import current_traceparent
from chiffon.core.tracing import SpanScope, failed
from chiffon.eventstore import NoReply, RequestReply, Subscription

log = get_logger(__name__)
C = TypeVar("C", bound=Command)


class CommandRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.code}: {refusal.message}")
        self.refusal = refusal


class CommandUnavailable(Exception):
    """Nobody answered: the owning service is down or overloaded."""


class CommandBus:
    """Commands over any ``RequestReply`` (an ``EventStore`` is one)."""

    def __init__(self, transport: RequestReply, namespace: str, *, timeout: float = 10.0) -> None:
        self.transport = transport
        self.namespace = namespace
        self.timeout = timeout

    async def send(self, command: Command, *, timeout: float | None = None) -> dict[str, Any]:
        """Send and wait for the reply; the result, or ``CommandRefused``.

        The command's span (a child of ``command.trace``) is the trace the command
        carries on to its handler, and so to the events it appends."""
        subject = command_subject(self.namespace, command)
        with SpanScope(
            f"command {command.name}",
            kind=SpanKind.CLIENT,
            attributes={"chiffon.command": command.name},
            parent=command.trace,
        ) as span:
            trace = current_traceparent()
            if trace is not None and trace != command.trace:
                command = command.model_copy(update={"trace": trace})
            headers = {"traceparent": trace} if trace else None
            try:
                answer = await self.transport.request(
                    subject,
                    command.model_dump_json().encode(),
                    timeout=timeout or self.timeout,
                    headers=headers,
                )
            except NoReply:
                raise CommandUnavailable(f"no {command.owner} answered {command.name}") from None
            reply = CommandReply.model_validate_json(answer)
            if not reply.ok:
                assert reply.refusal is not None
                failed(span, reply.refusal.code, reply.refusal.message)
        if not reply.ok:
            assert reply.refusal is not None
            raise CommandRefused(reply.refusal)
        return reply.result

    async def serve(
        self,
        command_type: type[C],
        handler: Callable[[C], Awaitable[dict[str, Any]]],
    ) -> Subscription:
        """Answer ``command_type`` with ``handler``; every replica joins one queue group.

        The handler returns the result or raises ``CommandRefused``; anything else is
        logged and answered as ``unavailable`` so the caller never hangs.
        """
        subject = command_subject(self.namespace, command_type)

        async def traced(command: C) -> CommandReply:
            """The handler's reply, in the command's server span: what the handler
            appends carries that span's traceparent."""
            with SpanScope(
                f"command {command.name}",
                kind=SpanKind.SERVER,
                attributes={"chiffon.command": command.name},
                parent=command.trace,
            ) as span:
                trace = current_traceparent()
                if trace is not None:
                    command = command.model_copy(update={"trace": trace})
                try:
                    return CommandReply(ok=True, result=await handler(command))
                except CommandRefused as refused:
                    failed(span, refused.refusal.code, refused.refusal.message)
                    refusal = refused
            raise refusal

        # The transport runs each request in its own task: a slow command (an append,
        # a read) does not queue the others.
        async def handle(data: bytes) -> bytes:
            try:
                command = command_type.model_validate_json(data)
                reply = await traced(command)
            except pydantic.ValidationError as error:
                reply = CommandReply(
                    ok=False,
                    refusal=Refusal(
                        code="invalid",
                        message=f"malformed {command_type.name} command",
                        details=[
                            {"path": ".".join(map(str, e["loc"])), "message": e["msg"]}
                            for e in error.errors(include_url=False)
                        ],
                    ),
                )
            except CommandRefused as refused:
                reply = CommandReply(ok=False, refusal=refused.refusal)
            except Exception as error:  # noqa: BLE001 — answer, log, keep serving
                log.exception("command.failed", command=command_type.name)
                reply = CommandReply(
                    ok=False,
                    refusal=Refusal(code="unavailable", message=f"{type(error).__name__}: {error}"),
                )
            return reply.model_dump_json().encode()

        return await self.transport.serve(subject, handle, queue=f"{command_type.owner}")
