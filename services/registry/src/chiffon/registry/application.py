"""The registry's application services: ``Credentials`` (issue, revoke, list, verify)
and ``Agents`` (register, heartbeat, deregister, read, and the liveness sweep).

Each change is load → decide (``domain.decide_*``) → append with the aggregate's
version, conflicts retried by the one shared helper. Heartbeats are not events: the
last one of each agent is a value in a key-value bucket (``<NS>_AGENT_HEARTBEATS``);
only transitions (went offline, came back) are appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from chiffon.commands import CommandRefused, Refusal
from chiffon.commands.model import (
    IssueAgentCredential,
    ListAgentCredentials,
    RevokeAgentCredential,
)
from chiffon.core.logging import get_logger
from chiffon.events import Actor, EventPayload, new_event
from chiffon.events.envelope import AGGREGATE_ID_PATTERN
from chiffon.eventstore import (
    AggregateKey,
    ConflictRetriesExhausted,
    EventStore,
    RecordedEvent,
    retry_on_conflict,
)
from chiffon.registry.credentials import (
    credential_id_of,
    display_prefix,
    hash_token,
    new_credential,
    same_hash,
)
from chiffon.registry.domain import (
    FREE_SLOTS,
    AgentState,
    CredentialNotFound,
    CredentialState,
    DeregisterAgent,
    IssueCredential,
    MarkBack,
    MarkOffline,
    RegisterAgent,
    ReportCapacity,
    RevokeCredential,
    decide_came_back,
    decide_capacity_changed,
    decide_deregister,
    decide_issue,
    decide_register,
    decide_revoke,
    decide_went_offline,
    evolve,
    evolve_credential,
)

log = get_logger(__name__)

Clock = Callable[[], datetime]
GRACE_SECONDS = 5.0
"""An agent is offline once its last heartbeat is older than its TTL plus this: an
agent beats every TTL/3, so two beats may be lost (or late) before it goes offline."""

HEARTBEAT_RETENTION = 2 * 3600.0
"""Seconds a heartbeat stays in the bucket: beyond the largest TTL (3600 s) plus grace,
so only agents long gone lose theirs."""

_AGGREGATE_ID = re.compile(AGGREGATE_ID_PATTERN)


def utc_now() -> datetime:
    return datetime.now(UTC)


def aggregate_id_for(agent_id: str) -> str:
    """The agent's aggregate id: its own id, or for one with ``.`` or ``:`` (which
    NATS subjects cannot carry) a digest of it (the event then names the id)."""
    if _AGGREGATE_ID.match(agent_id):
        return agent_id
    return "h-" + hashlib.sha256(agent_id.encode()).hexdigest()[:40]


def refuse(code: str, message: str) -> CommandRefused:
    return CommandRefused(Refusal(code=code, message=message))  # type: ignore[arg-type]


class CredentialRefused(Exception):
    """A presented token that is not accepted; ``revoked`` tells 403 from 401."""

    def __init__(self, message: str, *, revoked: bool = False) -> None:
        super().__init__(message)
        self.revoked = revoked


BOOTSTRAP_CREDENTIAL_ID = "bootstrap"


class Credentials:
    def __init__(
        self,
        store: EventStore,
        actor: Actor,
        *,
        clock: Clock = utc_now,
        bootstrap: tuple[str, str] | None = None,
    ) -> None:
        """``bootstrap``: (token, agent name) of the dev stack's local agent, accepted
        without an issued credential; never stored, never listed."""
        self.store = store
        self.actor = actor
        self.clock = clock
        self._bootstrap: CredentialState | None = None
        if bootstrap is not None:
            token, name = bootstrap
            self._bootstrap = CredentialState(
                BOOTSTRAP_CREDENTIAL_ID,
                name=name,
                secret_hash=hash_token(token),
                prefix=display_prefix(token),
            )

    async def load(self, credential_id: str) -> CredentialState:
        events, _ = await self.store.read_aggregate(AggregateKey("agent_credential", credential_id))
        state = CredentialState(credential_id)
        for event in events:
            state = evolve_credential(state, event)
        return state

    async def issue(self, command: IssueAgentCredential) -> dict[str, Any]:
        credential_id, token = new_credential()
        prefix = display_prefix(token)
        state = CredentialState(credential_id)
        payloads = decide_issue(
            state,
            IssueCredential(credential_id, command.agent_name, hash_token(token), prefix),
            self.clock(),
        )
        events = [
            new_event(p, aggregate_id=credential_id, actor=command.actor, trace=command.trace)
            for p in payloads
        ]
        await self.store.append(AggregateKey("agent_credential", credential_id), events, 0)
        return {
            "id": credential_id,
            "name": command.agent_name,
            "credential": token,
            "prefix": prefix,
            "created_at": events[0].occurred_at.isoformat(),
        }

    async def revoke(self, command: RevokeAgentCredential) -> dict[str, Any]:
        async def attempt() -> dict[str, Any]:
            state = await self.load(command.credential_id)
            try:
                payloads = decide_revoke(
                    state, RevokeCredential(command.credential_id, command.reason), self.clock()
                )
            except CredentialNotFound as missing:
                raise refuse("not_found", str(missing)) from None
            if payloads:
                await self.store.append(
                    AggregateKey("agent_credential", command.credential_id),
                    [
                        new_event(
                            p,
                            aggregate_id=command.credential_id,
                            actor=command.actor,
                            trace=command.trace,
                        )
                        for p in payloads
                    ],
                    state.version,
                )
            return {"id": command.credential_id, "name": state.name, "revoked": True}

        try:
            return await retry_on_conflict(attempt, what="revoke credential")
        except ConflictRetriesExhausted:
            raise refuse("unavailable", "the credential is changing; retry") from None

    async def list(self, command: ListAgentCredentials) -> dict[str, Any]:
        states: dict[str, CredentialState] = {}
        subject = f"{self.store.streams.namespace}.agent_credential.>"
        async for event in self.store.read_stream("AGENTS", subjects=[subject]):
            cid = event.envelope.aggregate_id
            states[cid] = evolve_credential(states.get(cid) or CredentialState(cid), event)
        return {
            "credentials": [
                {
                    "id": s.credential_id,
                    "name": s.name,
                    "prefix": s.prefix,
                    "created_at": s.created_at.isoformat() if s.created_at else None,
                    "revoked": s.revoked,
                }
                for s in states.values()
                if s.known
            ]
        }

    async def verify(self, token: str) -> CredentialState:
        """The credential ``token`` is, or ``CredentialRefused``."""
        bootstrap = self._bootstrap
        if (
            bootstrap is not None
            and bootstrap.secret_hash is not None
            and same_hash(bootstrap.secret_hash, hash_token(token))
        ):
            return bootstrap
        credential_id = credential_id_of(token)
        if credential_id is None:
            raise CredentialRefused("not an agent credential (chfa_...)")
        state = await self.load(credential_id)
        if not state.known or state.secret_hash is None:
            raise CredentialRefused("unknown agent credential")
        if not same_hash(state.secret_hash, hash_token(token)):
            raise CredentialRefused("unknown agent credential")
        if state.revoked:
            raise CredentialRefused("this agent credential was revoked", revoked=True)
        return state


# -- agents ---------------------------------------------------------------------------


class AgentUnknown(Exception):
    pass


class AgentGone(Exception):
    """Deregistered: it must register again."""


class AgentForbidden(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Heartbeat:
    at: float  # epoch seconds
    live: Mapping[str, Any] | None

    def encode(self) -> bytes:
        return json.dumps({"at": self.at, "live": self.live}).encode()

    @staticmethod
    def decode(data: bytes) -> Heartbeat | None:
        try:
            value = json.loads(data)
            return Heartbeat(float(value["at"]), value.get("live"))
        except (ValueError, KeyError, TypeError):
            return None


class AgentsView:
    """Every agent of the AGENTS stream, folded in memory (caught up, then followed
    live), for listings and the sweep; single reads load the aggregate itself."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentState] = {}
        self.caught_up = asyncio.Event()

    def apply(self, event: RecordedEvent) -> None:
        if event.envelope.aggregate != "agent":
            return
        agent = event.envelope.aggregate_id
        state = self.agents.get(agent) or AgentState(agent)
        if event.sequence > state.version:
            self.agents[agent] = evolve(state, event)

    async def follow(self, store: EventStore) -> None:
        """Catch up to the stream's end (then ``caught_up`` is set), then follow it.
        An event read twice (appended while catching up) is folded once."""
        subject = f"{store.streams.namespace}.agent.>"
        end = await store.last_sequence("AGENTS")
        async for batch in store.subscribe_batches("AGENTS", subjects=[subject], live=False):
            for event in batch:
                self.apply(event)
        self.caught_up.set()
        async for batch in store.subscribe_batches("AGENTS", start=end + 1, subjects=[subject]):
            for event in batch:
                self.apply(event)


class Agents:
    def __init__(
        self,
        store: EventStore,
        actor: Actor,
        view: AgentsView,
        *,
        grace: float = GRACE_SECONDS,
        clock: Clock = utc_now,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.actor = actor
        self.view = view
        self.grace = grace
        self.clock = clock
        self.wall = wall
        self.bucket = f"{store.streams.namespace.upper()}_AGENT_HEARTBEATS"

    async def load(self, aggregate_id: str) -> AgentState:
        events, _ = await self.store.read_aggregate(AggregateKey("agent", aggregate_id))
        state = AgentState(aggregate_id)
        for event in events:
            state = evolve(state, event)
        return state

    async def _append(
        self, state: AgentState, payloads: Sequence[EventPayload], actor: Actor | None = None
    ) -> None:
        if not payloads:
            return
        envelopes = [
            new_event(p, aggregate_id=state.agent_id, actor=actor or self.actor) for p in payloads
        ]
        key = AggregateKey("agent", state.agent_id)
        result = await self.store.append(key, envelopes, state.version)
        for envelope, sequence in zip(envelopes, result.sequences, strict=False):
            subject = self.store.streams.subject("agent", state.agent_id, envelope.type)
            self.view.apply(RecordedEvent(envelope, "AGENTS", sequence, subject))

    async def heartbeat_of(self, aggregate_id: str) -> Heartbeat | None:
        data = await self.store.kv_get(self.bucket, aggregate_id)
        return Heartbeat.decode(data) if data is not None else None

    async def _beat(self, aggregate_id: str, live: Mapping[str, Any] | None) -> Heartbeat:
        beat = Heartbeat(self.wall(), live)
        await self.store.kv_put(self.bucket, aggregate_id, beat.encode(), ttl=HEARTBEAT_RETENTION)
        return beat

    async def register(
        self, command: RegisterAgent, credential: CredentialState, actor: Actor
    ) -> AgentState:
        """Register (a heartbeat too: a fresh agent is alive). Raises ``AgentRefused``
        (``AgentBoundElsewhere``) for an id bound to another live credential."""

        async def attempt() -> AgentState:
            state = await self.load(command.agent_id)
            revoked = False
            if state.credential_id and state.credential_id != credential.credential_id:
                bound = await Credentials(self.store, self.actor).load(state.credential_id)
                revoked = bound.revoked
            decided = replace(command, credential_revoked=revoked)
            payloads = decide_register(state, decided, self.clock())
            await self._append(state, payloads, actor)
            return await self.load(command.agent_id) if payloads else state

        state = await retry_on_conflict(attempt, what="register agent")
        await self._beat(command.agent_id, None)
        return state

    async def guard(self, aggregate_id: str, credential: CredentialState) -> AgentState:
        state = await self.load(aggregate_id)
        if not state.known:
            raise AgentUnknown(aggregate_id)
        if state.credential_id and state.credential_id != credential.credential_id:
            raise AgentForbidden(aggregate_id)
        return state

    async def heartbeat(
        self, aggregate_id: str, credential: CredentialState, live: Mapping[str, Any] | None
    ) -> Heartbeat:
        state = await self.guard(aggregate_id, credential)
        if state.status == "deregistered":
            raise AgentGone(aggregate_id)
        beat = await self._beat(aggregate_id, live)
        if state.status == "offline":

            async def attempt() -> None:
                current = await self.load(aggregate_id)
                if current.status == "deregistered":
                    return
                payloads = decide_came_back(current, MarkBack(aggregate_id), self.clock())
                await self._append(current, payloads)

            await retry_on_conflict(attempt, what="agent came back")
            state = await self.load(aggregate_id)
        running = (live or {}).get("running_tasks")
        if isinstance(running, int) and state.status == "online":
            await self._report_free_slots(state, running)
        return beat

    async def _report_free_slots(self, state: AgentState, running: int) -> None:
        """``agent.capacity_changed`` when the agent's free slots (its max concurrency
        less the tasks it says it runs) moved by a tenth or more: what lets a run paused
        for want of capacity resume when an agent frees some. At most one event per
        heartbeat, so an agent cannot flood the stream faster than it beats."""

        def report(current: AgentState) -> ReportCapacity:
            free = float(max(0, current.max_concurrency - running))
            return ReportCapacity(
                current.agent_id,
                {**current.resources, FREE_SLOTS: free},
                current.max_concurrency,
            )

        first = True

        async def attempt() -> None:
            nonlocal first
            current = state if first else await self.load(state.agent_id)
            first = False
            if current.status != "online":
                return
            payloads = decide_capacity_changed(current, report(current), self.clock())
            await self._append(current, payloads)

        await retry_on_conflict(attempt, what="agent capacity changed")

    async def deregister(self, aggregate_id: str, credential: CredentialState) -> None:
        await self.guard(aggregate_id, credential)

        async def attempt() -> None:
            state = await self.load(aggregate_id)
            if state.status == "deregistered":
                raise AgentGone(aggregate_id)
            payloads = decide_deregister(
                state, DeregisterAgent(aggregate_id, "deregistered by the agent"), self.clock()
            )
            await self._append(state, payloads)

        await retry_on_conflict(attempt, what="deregister agent")
        with contextlib.suppress(Exception):
            await self.store.kv_delete(self.bucket, aggregate_id)

    def lapsed(self, state: AgentState, beat: Heartbeat | None, now: float) -> bool:
        if beat is None:
            return True
        return now - beat.at > state.ttl_seconds + self.grace

    async def sweep(self) -> int:
        """Mark offline every online agent whose heartbeat lapsed; how many this
        replica marked. Another replica sweeping at once appends at most one
        ``agent.went_offline`` per agent between them: the append names the version
        its decision read, the loser reloads and finds the agent offline already."""
        marked = 0
        for agent_id, seen in list(self.view.agents.items()):
            if seen.status != "online":
                continue
            if not self.lapsed(seen, await self.heartbeat_of(agent_id), self.wall()):
                continue

            async def attempt(agent_id: str = agent_id) -> int:
                state = await self.load(agent_id)
                beat = await self.heartbeat_of(agent_id)
                if state.status != "online" or not self.lapsed(state, beat, self.wall()):
                    return 0
                age = "never" if beat is None else f"{self.wall() - beat.at:.1f} s ago"
                reason = (
                    f"no heartbeat within {state.ttl_seconds} s + {self.grace:g} s (last: {age})"
                )
                payloads = decide_went_offline(state, MarkOffline(agent_id, reason), self.clock())
                await self._append(state, payloads)
                return len(payloads)

            try:
                marked += await retry_on_conflict(attempt, what="agent went offline")
            except Exception:  # noqa: BLE001 — one agent's failure never stops the sweep
                log.exception("registry.sweep_failed", agent_id=agent_id)
        return marked

    def sweep_interval(self) -> float:
        """TTL/6 of the shortest TTL among online agents (0.5 s at least, 10 s at most)."""
        ttls = [s.ttl_seconds for s in self.view.agents.values() if s.status == "online"]
        return min(10.0, max(0.5, min(ttls, default=60) / 6))

    async def run_sweeper(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 — the next sweep tries again
                log.exception("registry.sweep_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.sweep_interval())
