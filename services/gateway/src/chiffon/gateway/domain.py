"""The API key aggregate: its immutable state, its fold, the decisions to create and revoke.

No I/O and no clock: the time is handed in. A key's state is a frozen value rebuilt by
``evolve``, the one fold shared by the command side (``ApiKeys``), the gateway's key
cache and the ``api_keys`` projection. Secrets never reach this module: the caller
makes the token and hands over its hash and display prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chiffon.events import Actor, actor_label
from chiffon.events.keys import ApiKeyCreated, ApiKeyRevoked, ApiKeyRole

if TYPE_CHECKING:  # only its shape: importing the event store package loads the NATS client
    from chiffon.eventstore import RecordedEvent

# -- refusals ------------------------------------------------------------------------


class KeyRefused(Exception):
    """A key command its state refuses."""


class KeyNotFound(KeyRefused):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id!r}")
        self.key_id = key_id


class KeyAlreadyRevoked(KeyRefused):
    def __init__(self, key: ApiKey) -> None:
        super().__init__(
            f"API key {key.key_id!r} ({key.name}) was already revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S}"
        )
        self.key = key


class KeyAlreadyExists(KeyRefused):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} exists already")
        self.key_id = key_id


# -- state ---------------------------------------------------------------------------


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
    position: int = 0  # stream sequence of the last event folded

    @property
    def actor(self) -> Actor:
        return Actor(kind="api_key", id=self.key_id, name=self.name)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def usable(self, now: datetime) -> bool:
        return not self.revoked and not self.expired(now)

    def row(self) -> dict[str, Any]:
        """The key as its ``api_keys`` read-model row (the same names, column by column)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls(**{name: m[name] for name in cls.__slots__})


def evolve(key: ApiKey | None, event: RecordedEvent) -> ApiKey | None:
    """The key after ``event`` (None: no such key yet). Pure: a replay gives the same key."""
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
    if isinstance(payload, ApiKeyRevoked) and not key.revoked:
        return replace(
            key,
            revoked_at=env.occurred_at,
            revoked_by=actor_label(env.actor),
            revoke_reason=payload.reason,
            position=event.sequence,
        )
    return replace(key, position=event.sequence)


# -- decisions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateKey:
    """Issue a key. The token itself stays with the caller: only its hash is recorded."""

    key_id: str
    name: str
    role: ApiKeyRole
    key_hash: str
    prefix: str
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RevokeKey:
    key_id: str
    reason: str | None = None


def decide_create(key: ApiKey | None, command: CreateKey, now: datetime) -> list[ApiKeyCreated]:
    if key is not None:
        raise KeyAlreadyExists(command.key_id)
    return [
        ApiKeyCreated(
            name=command.name,
            role=command.role,
            key_hash=command.key_hash,
            prefix=command.prefix,
            expires_at=command.expires_at,
        )
    ]


def decide_revoke(key: ApiKey | None, command: RevokeKey, now: datetime) -> list[ApiKeyRevoked]:
    if key is None:
        raise KeyNotFound(command.key_id)
    if key.revoked:
        raise KeyAlreadyRevoked(key)
    return [ApiKeyRevoked(reason=command.reason)]
