"""API keys: the gateway's aggregate. Tokens, hashing, the fold, and the application service.

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from chiffon.core.logging import get_logger
from chiffon.events import Actor, actor_label, new_event, uuid7
from chiffon.events.keys import API_KEY_ROLES, ApiKeyCreated, ApiKeyRevoked
from chiffon.eventstore import (
    NO_EVENTS,
    AggregateKey,
    ConcurrencyConflict,
    JetStreamEventStore,
    RecordedEvent,
)

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


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    role: str
    key_hash: str
    prefix: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    position: int = 0

    @property
    def actor(self) -> Actor:
        return Actor(kind="api_key", id=self.key_id, name=self.name)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(UTC)) >= self.expires_at

    def usable(self, now: datetime | None = None) -> bool:
        return not self.revoked and not self.expired(now)

    def row(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "key_hash": self.key_hash,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "revoke_reason": self.revoke_reason,
            "position": self.position,
        }

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(**{name: m[name] for name in cls.__slots__})


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


def fold(key: ApiKey | None, event: RecordedEvent) -> ApiKey | None:
    """The key after ``event``; pure, shared by the projection, the cache and the commands."""
    payload = event.payload
    env = event.envelope
    if isinstance(payload, ApiKeyCreated):
        return ApiKey(
            key_id=env.aggregate_id,
            name=payload.name,
            role=payload.role,
            key_hash=payload.key_hash,
            prefix=payload.prefix,
            created_at=env.occurred_at,
            created_by=actor_label(env.actor),
            expires_at=payload.expires_at,
            position=event.sequence,
        )
    if key is None:
        return None
    if isinstance(payload, ApiKeyRevoked):
        if key.revoked:
            return replace(key, position=event.sequence)
        return replace(
            key,
            revoked_at=env.occurred_at,
            revoked_by=actor_label(env.actor),
            revoke_reason=payload.reason,
            position=event.sequence,
        )
    return replace(key, position=event.sequence)


class KeyNotFound(Exception):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id!r}")
        self.key_id = key_id


class KeyAlreadyRevoked(Exception):
    def __init__(self, key: ApiKey) -> None:
        super().__init__(
            f"API key {key.key_id!r} ({key.name}) was already revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S}"
        )
        self.key = key


class ApiKeys:
    """Issue and revoke keys: load the aggregate, decide, append."""

    def __init__(self, store: JetStreamEventStore) -> None:
        self.store = store

    async def load(self, key_id: str) -> tuple[ApiKey | None, int]:
        events, version = await self.store.read_aggregate(AggregateKey("apikey", key_id))
        state: ApiKey | None = None
        for event in events:
            state = fold(state, event)
        return state, version

    async def create(
        self,
        *,
        name: str,
        role: str,
        actor: Actor,
        expires_at: datetime | None = None,
        trace: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token exists outside its holder)."""
        token = new_token()
        key_id = str(uuid7())
        event = new_event(
            ApiKeyCreated(
                name=name,
                role=role,  # type: ignore[arg-type]
                key_hash=hash_token(token),
                prefix=display_prefix(token),
                expires_at=expires_at,
            ),
            aggregate_id=key_id,
            actor=actor,
            correlation_id=key_id,
            trace=trace,
        )
        result = await self.store.append(
            AggregateKey("apikey", key_id), [event], expected_version=NO_EVENTS
        )
        recorded = RecordedEvent(event, self.store.streams.stream_for("apikey"), result.version, "")
        created = fold(None, recorded)
        assert created is not None
        log.info("apikey.created", key_id=key_id, name=name, role=role, by=str(actor))
        return created, token

    async def revoke(
        self, key_id: str, *, actor: Actor, reason: str | None = None, trace: str | None = None
    ) -> ApiKey:
        for _ in range(5):
            key, version = await self.load(key_id)
            if key is None:
                raise KeyNotFound(key_id)
            if key.revoked:
                raise KeyAlreadyRevoked(key)
            event = new_event(
                ApiKeyRevoked(reason=reason),
                aggregate_id=key_id,
                actor=actor,
                correlation_id=key_id,
                trace=trace,
            )
            try:
                result = await self.store.append(
                    AggregateKey("apikey", key_id), [event], expected_version=version
                )
            except ConcurrencyConflict:
                continue
            recorded = RecordedEvent(
                event, self.store.streams.stream_for("apikey"), result.version, ""
            )
            revoked = fold(key, recorded)
            assert revoked is not None
            log.info("apikey.revoked", key_id=key_id, by=str(actor))
            return revoked
        raise ConcurrencyConflict("apikey", key_id, 0, None)
