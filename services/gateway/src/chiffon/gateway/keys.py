"""API keys: tokens, hashing, the bootstrap key, and ``ApiKeys`` (the application service).

The aggregate itself (state, fold, decisions) is in ``chiffon.gateway.domain``.

A token is ``chf_`` followed by 43 URL-safe characters (256 random bits). Only its
sha256 is ever written (in the ``apikey.created`` event and the read model): with that
much entropy a plain hash cannot be reversed by guessing, so no pepper (a secret every
replica would have to share) is needed. Lookups go by hash; the comparison that
accepts a token is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from chiffon.core.logging import get_logger
from chiffon.events import Actor, EventPayload, new_event, uuid7
from chiffon.events.keys import API_KEY_ROLES, ApiKeyRole
from chiffon.eventstore import (
    NO_EVENTS,
    AggregateKey,
    ConflictRetriesExhausted,
    EventStore,
    RecordedEvent,
    retry_on_conflict,
)

# The key's state, fold and refusals live in the domain; re-exported for the routes,
# the dashboard and the key cache, which know keys by this module.
from chiffon.gateway.domain import ApiKey as ApiKey
from chiffon.gateway.domain import CreateKey, RevokeKey, decide_create, decide_revoke, evolve
from chiffon.gateway.domain import KeyAlreadyRevoked as KeyAlreadyRevoked
from chiffon.gateway.domain import KeyNotFound as KeyNotFound

log = get_logger(__name__)

TOKEN_PREFIX = "chf_"  # noqa: S105 — a marker, not a secret
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(API_KEY_ROLES)}
BOOTSTRAP_KEY_ID = "bootstrap"
BOOTSTRAP_KEY_NAME = "bootstrap-admin"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def display_prefix(token: str) -> str:
    return token[:10]


def allows(role: str, needed: str) -> bool:
    """viewer < operator < admin: a role may do everything a lower one may."""
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[needed]


def bootstrap_key(token: str) -> ApiKey:
    """The dev stack's admin key from the environment: never stored, never revocable here."""
    return ApiKey(
        key_id=BOOTSTRAP_KEY_ID,
        name=BOOTSTRAP_KEY_NAME,
        role="admin",
        key_hash=hash_token(token),
        prefix=display_prefix(token),
        created_at=datetime(1970, 1, 1, tzinfo=UTC),
        created_by="environment",
    )


class ApiKeys:
    """Issue and revoke keys: load the aggregate, decide (``domain.decide_*``), append."""

    def __init__(self, store: EventStore, *, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.clock = clock or (lambda: datetime.now(UTC))

    async def load(self, key_id: str) -> tuple[ApiKey | None, int]:
        events, version = await self.store.read_aggregate(AggregateKey("apikey", key_id))
        state: ApiKey | None = None
        for event in events:
            state = evolve(state, event)
        return state, version

    async def create(
        self,
        *,
        name: str,
        role: ApiKeyRole,
        actor: Actor,
        expires_at: datetime | None = None,
        trace: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token exists outside its holder)."""
        token = new_token()
        command = CreateKey(
            key_id=str(uuid7()),
            name=name,
            role=role,
            key_hash=hash_token(token),
            prefix=display_prefix(token),
            expires_at=expires_at,
        )
        # A fresh key id has no events: nothing to load, and nobody to race with.
        created = await self._append(
            None,
            NO_EVENTS,
            command.key_id,
            decide_create(None, command, self.clock()),
            actor,
            trace,
        )
        log.info("apikey.created", key_id=command.key_id, name=name, role=role, by=str(actor))
        return created, token

    async def revoke(
        self, key_id: str, *, actor: Actor, reason: str | None = None, trace: str | None = None
    ) -> ApiKey:
        """Revoke the key; ``KeyNotFound`` or ``KeyAlreadyRevoked`` when it cannot be, and
        ``ConcurrencyConflict`` when it kept changing through every retry."""

        async def attempt() -> ApiKey:
            key, version = await self.load(key_id)
            payloads = decide_revoke(key, RevokeKey(key_id, reason), self.clock())
            return await self._append(key, version, key_id, payloads, actor, trace)

        try:
            revoked = await retry_on_conflict(attempt, what=f"revocation of API key {key_id}")
        except ConflictRetriesExhausted as exhausted:
            raise exhausted.last from None
        log.info("apikey.revoked", key_id=key_id, by=str(actor))
        return revoked

    async def _append(
        self,
        key: ApiKey | None,
        version: int,
        key_id: str,
        payloads: Sequence[EventPayload],
        actor: Actor,
        trace: str | None,
    ) -> ApiKey:
        """Append after ``version``; the key with the appended events folded in."""
        events = [
            new_event(p, aggregate_id=key_id, actor=actor, correlation_id=key_id, trace=trace)
            for p in payloads
        ]
        result = await self.store.append(
            AggregateKey("apikey", key_id), events, expected_version=version
        )
        stream = self.store.streams.stream_for("apikey")
        for event, sequence in zip(events, result.sequences, strict=True):
            key = evolve(key, RecordedEvent(event, stream, sequence, ""))
        assert key is not None
        return key
