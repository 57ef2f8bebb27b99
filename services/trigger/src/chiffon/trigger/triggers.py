"""The trigger commands (create, set secrets, disable, enable, list, show), answered from
every trigger folded in memory, and what a delivery needs of its trigger, ready.

Every replica folds the TRIGGERS stream's ``trigger.*`` events (``start`` catches up,
then a task follows live), and keeps for each open trigger a ``HookTarget``: its
secrets decrypted once into verifiers, its input sources parsed. A delivery looks its
trigger up in a dict, so the hot path reads nothing from the store. A command catches
its trigger up from the store (``read_aggregate`` after the version it has), decides,
and appends with that version; a conflict (another replica) is retried from there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from standardwebhooks import Webhook

from chiffon.commands import CommandRefused, Refusal
from chiffon.commands.model import Command
from chiffon.commands.triggers import (
    CreateTrigger,
    DisableTrigger,
    EnableTrigger,
    ListTriggers,
    SetTriggerSecrets,
    ShowTrigger,
)
from chiffon.core.logging import get_logger
from chiffon.events import Actor, EventPayload, new_event
from chiffon.events.triggers import Scheme
from chiffon.eventstore import (
    AggregateKey,
    ConflictRetriesExhausted,
    EventStore,
    RecordedEvent,
    retry_on_conflict,
)
from chiffon.trigger.secrets import SecretBox, SecretUnreadable
from chiffon.trigger.trigger_domain import (
    Source,
    TriggerExists,
    TriggerInvalid,
    TriggerNotFound,
    TriggerState,
    answer,
    decide_create,
    decide_disable,
    decide_enable,
    decide_set_secrets,
    evolve,
    parse_source,
    standard_webhooks_key,
    validate_create,
    validate_name,
)
from chiffon.trigger.verify import standard_webhook

log = get_logger(__name__)

CONTEXT = "TRIGGERS"
T = TypeVar("T")

DeliveryCounts = Callable[[str], Awaitable[tuple[int, datetime | None]]]
RecentDeliveries = Callable[[str], Awaitable[list[dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class HookTarget:
    """An open trigger as a delivery needs it (secrets in clear: memory only)."""

    name: str
    scheme: Scheme
    workflow: str
    version: int | None
    sources: dict[str, Source]
    headers_kept: frozenset[str]  # the headers its inputs read (stored with a delivery)
    webhooks: tuple[Webhook, ...] = ()  # Standard Webhooks: one signer per secret
    keys: tuple[bytes, ...] = ()  # WhatsApp app secrets, Telegram secret tokens
    verify_token: str | None = None


def _refused(
    code: str, message: str, details: list[dict[str, str]] | None = None
) -> CommandRefused:
    return CommandRefused(Refusal(code=code, message=message, details=details or []))  # type: ignore[arg-type]


def _no_box() -> CommandRefused:
    return _refused(
        "unavailable",
        "the trigger service has no secrets key (CHIFFON_TRIGGER_SECRETS_KEY or "
        "CHIFFON_TRIGGER_SECRETS_KEY_FILE), so it cannot store a trigger's secrets",
    )


class Triggers:
    """The trigger aggregates folded in memory, the commands on them, and the open
    triggers' ``HookTarget``s."""

    def __init__(self, store: EventStore, box: SecretBox | None, actor: Actor) -> None:
        self._store = store
        self._box = box
        self._actor = actor
        self.states: dict[str, TriggerState] = {}
        self.targets: dict[str, HookTarget] = {}
        self._position = 0
        self._following: asyncio.Task[None] | None = None
        self.counts: DeliveryCounts | None = None
        self.recent: RecentDeliveries | None = None

    @property
    def following(self) -> bool:
        return self._following is not None and not self._following.done()

    # -- the fold ------------------------------------------------------------------------------

    def apply(self, event: RecordedEvent) -> None:
        if event.envelope.aggregate != "trigger":
            return
        name = event.envelope.aggregate_id
        state = self.states.get(name) or TriggerState(name)
        if event.sequence <= state.version:
            return
        state = self.states[name] = evolve(state, event.envelope, event.sequence)
        self._target(state)

    def _target(self, state: TriggerState) -> None:
        """Build (or drop) the trigger's ``HookTarget`` after a change."""
        if not state.open or self._box is None:
            self.targets.pop(state.name, None)
            return
        try:
            secrets = [self._box.decrypt(token) for token in state.secrets_encrypted]
            verify_token = (
                self._box.decrypt(state.verify_token_encrypted)
                if state.verify_token_encrypted
                else None
            )
        except SecretUnreadable:
            log.error("trigger.secrets_unreadable", trigger=state.name)
            self.targets.pop(state.name, None)
            return
        sources = {name: parse_source(text) for name, text in state.inputs.items()}
        webhooks: tuple[Webhook, ...] = ()
        keys: tuple[bytes, ...] = ()
        if state.scheme == "standard-webhooks":
            webhooks = tuple(standard_webhook(standard_webhooks_key(s)) for s in secrets)
        else:
            keys = tuple(secret.encode() for secret in secrets)
        self.targets[state.name] = HookTarget(
            name=state.name,
            scheme=state.scheme,
            workflow=state.workflow,
            version=state.workflow_version,
            sources=sources,
            headers_kept=frozenset(s.header for s in sources.values() if s.kind == "header"),
            webhooks=webhooks,
            keys=keys,
            verify_token=verify_token,
        )

    def _subject(self) -> str:
        return f"{self._store.streams.namespace}.trigger.>"

    async def start(self) -> None:
        """Fold the triggers so far; return once caught up (then follow live)."""
        await self.catch_up()
        self._following = asyncio.create_task(
            self._follow(self._position + 1), name="trigger:triggers"
        )

    async def stop(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._following

    async def catch_up(self) -> None:
        end = await self._store.last_sequence(CONTEXT)
        if end <= self._position:
            return
        async for batch in self._store.subscribe_batches(
            CONTEXT, start=self._position + 1, subjects=[self._subject()], live=False
        ):
            for event in batch:
                self.apply(event)
        self._position = max(self._position, end)

    async def _follow(self, start: int) -> None:
        async for batch in self._store.subscribe_batches(
            CONTEXT, start=start, subjects=[self._subject()]
        ):
            for event in batch:
                self.apply(event)
                self._position = max(self._position, event.sequence)

    async def load(self, name: str) -> TriggerState:
        """The trigger brought up to date from the store."""
        state = self.states.get(name) or TriggerState(name)
        events, _ = await self._store.read_aggregate(
            AggregateKey("trigger", name), after=state.version
        )
        for event in events:
            self.apply(event)
        return self.states.get(name) or state

    async def _append(
        self, state: TriggerState, payloads: Sequence[EventPayload], command: Command
    ) -> TriggerState:
        if not payloads:
            return state
        envelopes = [
            new_event(p, aggregate_id=state.name, actor=command.actor, trace=command.trace)
            for p in payloads
        ]
        result = await self._store.append(
            AggregateKey("trigger", state.name),
            envelopes,
            state.version,
            idempotency_key=command.idempotency_key,
        )
        if result.all_duplicates:
            return await self.load(state.name)
        for envelope, sequence in zip(envelopes, result.sequences, strict=False):
            subject = self._store.streams.subject("trigger", state.name, envelope.type)
            self.apply(RecordedEvent(envelope, CONTEXT, sequence, subject))
        return self.states[state.name]

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await retry_on_conflict(attempt, what=what)
        except ConflictRetriesExhausted:
            raise _refused("unavailable", "the trigger is changing; retry") from None
        except TriggerInvalid as invalid:
            raise _refused("invalid", str(invalid), invalid.details) from None
        except TriggerNotFound as missing:
            raise _refused("not_found", str(missing)) from None
        except TriggerExists as taken:
            raise _refused("conflict", str(taken)) from None

    async def _answer(self, state: TriggerState) -> dict[str, Any]:
        count, last = (0, None)
        if self.counts is not None:
            count, last = await self.counts(state.name)
        return answer(state, count, last)

    # -- commands ------------------------------------------------------------------------------

    async def create(self, command: CreateTrigger) -> dict[str, Any]:
        try:
            new = validate_create(
                trigger=command.trigger,
                workflow=command.workflow,
                version=command.version,
                scheme=command.scheme,
                secrets=command.secrets,
                verify_token=command.verify_token,
                inputs=command.inputs,
                reply=command.reply,
            )
        except TriggerInvalid as invalid:
            raise _refused("invalid", str(invalid), invalid.details) from None
        box = self._box
        if box is None:
            raise _no_box()

        async def attempt() -> TriggerState:
            state = await self.load(new.name)
            return await self._append(state, decide_create(state, new, box.encrypt), command)

        state = await self._retrying(attempt, f"create trigger {new.name}")
        log.info("trigger.created", trigger=new.name, scheme=new.scheme, actor=str(command.actor))
        return answer(state)

    async def set_secrets(self, command: SetTriggerSecrets) -> dict[str, Any]:
        name = self._name(command.trigger)
        box = self._box
        if box is None:
            raise _no_box()

        async def attempt() -> TriggerState:
            state = await self.load(name)
            return await self._append(
                state, decide_set_secrets(state, command.secrets, box.encrypt), command
            )

        state = await self._retrying(attempt, f"set secrets of trigger {name}")
        log.info("trigger.secrets_set", trigger=name, secrets=len(command.secrets))
        return await self._answer(state)

    async def disable(self, command: DisableTrigger) -> dict[str, Any]:
        name = self._name(command.trigger)

        async def attempt() -> TriggerState:
            state = await self.load(name)
            return await self._append(state, decide_disable(state, command.reason), command)

        state = await self._retrying(attempt, f"disable trigger {name}")
        log.info("trigger.disabled", trigger=name, actor=str(command.actor))
        return await self._answer(state)

    async def enable(self, command: EnableTrigger) -> dict[str, Any]:
        name = self._name(command.trigger)

        async def attempt() -> TriggerState:
            state = await self.load(name)
            return await self._append(state, decide_enable(state), command)

        state = await self._retrying(attempt, f"enable trigger {name}")
        log.info("trigger.enabled", trigger=name, actor=str(command.actor))
        return await self._answer(state)

    async def list_triggers(self, command: ListTriggers) -> dict[str, Any]:
        await self.catch_up()
        states = [self.states[name] for name in sorted(self.states)]
        return {"triggers": [await self._answer(s) for s in states if s.created]}

    async def show(self, command: ShowTrigger) -> dict[str, Any]:
        name = self._name(command.trigger)
        state = await self.load(name)
        if not state.created:
            raise _refused("not_found", f"no trigger {name!r}")
        shown = await self._answer(state)
        shown["recent_deliveries"] = await self.recent(name) if self.recent else []
        return shown

    @staticmethod
    def _name(name: str) -> str:
        try:
            return validate_name(name)
        except TriggerInvalid as invalid:
            raise _refused("invalid", str(invalid), invalid.details) from None

    def handlers(self) -> list[tuple[type[Command], Any]]:
        return [
            (CreateTrigger, self.create),
            (SetTriggerSecrets, self.set_secrets),
            (DisableTrigger, self.disable),
            (EnableTrigger, self.enable),
            (ListTriggers, self.list_triggers),
            (ShowTrigger, self.show),
        ]


def utc_now() -> datetime:
    return datetime.now(UTC)
