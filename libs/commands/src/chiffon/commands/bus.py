"""Sending and serving commands over NATS request-reply (queue groups spread the load)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import pydantic
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from chiffon.commands.model import Command, CommandReply, Refusal, command_subject
from chiffon.core.logging import get_logger

log = get_logger(__name__)
C = TypeVar("C", bound=Command)


class CommandRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"{refusal.code}: {refusal.message}")
        self.refusal = refusal


class CommandUnavailable(Exception):
    """Nobody answered: the owning service is down or overloaded."""


class CommandBus:
    def __init__(self, nc: NATS, namespace: str, *, timeout: float = 10.0) -> None:
        self.nc = nc
        self.namespace = namespace
        self.timeout = timeout

    async def send(self, command: Command, *, timeout: float | None = None) -> dict[str, Any]:
        """Send and wait for the reply; the result, or ``CommandRefused``."""
        subject = command_subject(self.namespace, command)
        headers = {"traceparent": command.trace} if command.trace else None
        try:
            msg = await self.nc.request(
                subject,
                command.model_dump_json().encode(),
                timeout=timeout or self.timeout,
                headers=headers,
            )
        except (TimeoutError, nats.errors.NoRespondersError, nats.errors.TimeoutError):
            raise CommandUnavailable(f"no {command.owner} answered {command.name}") from None
        reply = CommandReply.model_validate_json(msg.data)
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

        # nats-py runs a subscription's callbacks one at a time; hand each command to
        # its own task so a slow one (an append, a read) does not queue the others.
        in_flight: set[asyncio.Task[None]] = set()

        async def on_message(msg: Msg) -> None:
            task = asyncio.create_task(handle(msg))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

        async def handle(msg: Msg) -> None:
            try:
                command = command_type.model_validate_json(msg.data)
                reply = CommandReply(ok=True, result=await handler(command))
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
            if msg.reply:
                await msg.respond(reply.model_dump_json().encode())

        return await self.nc.subscribe(subject, queue=f"{command_type.owner}", cb=on_message)
