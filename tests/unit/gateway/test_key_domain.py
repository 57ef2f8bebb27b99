"""The API key aggregate: its fold and the decisions to create and revoke."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from chiffon.events import Actor, EventPayload, new_event
from chiffon.events.keys import ApiKeyCreated, ApiKeyRevoked
from chiffon.eventstore import RecordedEvent
from chiffon.gateway.domain import (
    ApiKey,
    CreateKey,
    KeyAlreadyExists,
    KeyAlreadyRevoked,
    KeyNotFound,
    RevokeKey,
    decide_create,
    decide_revoke,
    evolve,
)

ADMIN = Actor(kind="api_key", id="admin-1", name="root")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HASH = "a" * 64
CREATE = CreateKey(key_id="k1", name="ci", role="operator", key_hash=HASH, prefix="chf_abcdef")


def recorded(payload: EventPayload, sequence: int, seconds: float = 0) -> RecordedEvent:
    at = T0 + timedelta(seconds=seconds)
    envelope = new_event(payload, aggregate_id="k1", actor=ADMIN, occurred_at=at)
    return RecordedEvent(envelope, "KEYS", sequence, "")


def created(expires_at: datetime | None = None) -> ApiKey:
    command = dataclasses.replace(CREATE, expires_at=expires_at)
    (event,) = decide_create(None, command, T0)
    key = evolve(None, recorded(event, 3))
    assert key is not None
    return key


def test_a_created_key_records_who_made_it_and_only_the_hash() -> None:
    key = created()
    assert (key.key_id, key.name, key.role, key.key_hash, key.prefix) == (
        "k1",
        "ci",
        "operator",
        HASH,
        "chf_abcdef",
    )
    assert (key.created_at, key.created_by, key.position) == (T0, "api_key:admin-1", 3)
    assert key.actor == Actor(kind="api_key", id="k1", name="ci")
    assert key.usable(T0) and not key.revoked


def test_a_key_expires_at_its_time() -> None:
    key = created(expires_at=T0 + timedelta(hours=1))
    assert key.usable(T0 + timedelta(minutes=59))
    assert key.expired(T0 + timedelta(hours=1)) and not key.usable(T0 + timedelta(hours=2))


def test_creating_over_an_existing_key_is_refused() -> None:
    with pytest.raises(KeyAlreadyExists):
        decide_create(created(), CREATE, T0)


def test_a_revocation_records_who_when_and_why_and_the_key_stops_working() -> None:
    key = created()
    (event,) = decide_revoke(key, RevokeKey("k1", "leaked"), T0)
    assert event == ApiKeyRevoked(reason="leaked")
    revoked = evolve(key, recorded(event, 9, seconds=60))
    assert revoked is not None
    assert (revoked.revoked_at, revoked.revoked_by, revoked.revoke_reason) == (
        T0 + timedelta(seconds=60),
        "api_key:admin-1",
        "leaked",
    )
    assert revoked.position == 9 and not revoked.usable(T0)
    assert key.revoked_at is None  # the state folded from is left as it was


def test_revoking_an_unknown_or_revoked_key_is_refused() -> None:
    with pytest.raises(KeyNotFound, match="no API key 'k1'"):
        decide_revoke(None, RevokeKey("k1"), T0)
    revoked = evolve(created(), recorded(ApiKeyRevoked(), 4))
    with pytest.raises(KeyAlreadyRevoked, match=r"'k1' \(ci\) was already revoked at 2026-01-01"):
        decide_revoke(revoked, RevokeKey("k1"), T0)


def test_a_second_revocation_in_the_stream_keeps_the_first() -> None:
    first = evolve(created(), recorded(ApiKeyRevoked(reason="one"), 4, seconds=1))
    again = evolve(first, recorded(ApiKeyRevoked(reason="two"), 5, seconds=2))
    assert again is not None and first is not None
    assert (again.revoke_reason, again.revoked_at, again.position) == ("one", first.revoked_at, 5)


def test_events_before_the_creation_give_no_key() -> None:
    assert evolve(None, recorded(ApiKeyRevoked(), 1)) is None


def test_the_row_and_back_is_the_same_key() -> None:
    key = created(expires_at=T0)
    assert ApiKey.from_row(key.row()) == key
    assert set(key.row()) >= {"key_id", "key_hash", "revoked_at", "position"}


def test_the_creation_event_carries_the_command() -> None:
    (event,) = decide_create(None, CREATE, T0)
    assert event == ApiKeyCreated(name="ci", role="operator", key_hash=HASH, prefix="chf_abcdef")
