"""ApiKeys on the in-memory event store: issue, revoke, and conflicts retried."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chiffon.events import CATALOG, Actor
from chiffon.eventstore import (
    AggregateKey,
    ConcurrencyConflict,
)
from chiffon.gateway.keys import (
    TOKEN_PREFIX,
    ApiKeys,
    KeyAlreadyRevoked,
    KeyNotFound,
    hash_token,
)
from tests.support.stores import ConflictingStore

ADMIN = Actor(kind="api_key", id="admin-1", name="root")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def store() -> ConflictingStore:
    return ConflictingStore(CATALOG)


@pytest.fixture
def keys(store: ConflictingStore) -> ApiKeys:
    return ApiKeys(store, clock=lambda: NOW)


async def test_a_created_key_is_stored_by_its_hash_and_the_token_is_returned_once(
    keys: ApiKeys, store: ConflictingStore
) -> None:
    expiry = NOW + timedelta(days=30)
    key, token = await keys.create(name="ci", role="operator", actor=ADMIN, expires_at=expiry)
    assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
    assert (key.name, key.role, key.key_hash, key.expires_at) == (
        "ci",
        "operator",
        hash_token(token),
        expiry,
    )
    assert key.prefix == token[:10]
    events, version = await store.read_aggregate(AggregateKey("apikey", key.key_id))
    assert [e.type for e in events] == ["apikey.created"]
    assert token not in events[0].envelope.model_dump_json()
    loaded, loaded_version = await keys.load(key.key_id)
    assert (loaded, loaded_version) == (key, version)


async def test_a_revoked_key_says_by_whom_and_why(keys: ApiKeys) -> None:
    key, _ = await keys.create(name="ci", role="viewer", actor=ADMIN)
    revoked = await keys.revoke(key.key_id, actor=ADMIN, reason="leaked")
    assert (revoked.revoked, revoked.revoked_by, revoked.revoke_reason) == (
        True,
        "api_key:admin-1",
        "leaked",
    )
    assert (await keys.load(key.key_id))[0] == revoked


async def test_revoking_twice_or_an_unknown_key_is_refused(keys: ApiKeys) -> None:
    key, _ = await keys.create(name="ci", role="viewer", actor=ADMIN)
    await keys.revoke(key.key_id, actor=ADMIN)
    with pytest.raises(KeyAlreadyRevoked):
        await keys.revoke(key.key_id, actor=ADMIN)
    with pytest.raises(KeyNotFound):
        await keys.revoke("missing", actor=ADMIN)


async def test_a_revocation_that_loses_races_decides_again(
    keys: ApiKeys, store: ConflictingStore
) -> None:
    key, _ = await keys.create(name="ci", role="viewer", actor=ADMIN)
    store.conflicts = 3
    assert (await keys.revoke(key.key_id, actor=ADMIN)).revoked


async def test_a_revocation_that_always_loses_reports_the_conflict(
    keys: ApiKeys, store: ConflictingStore
) -> None:
    key, _ = await keys.create(name="ci", role="viewer", actor=ADMIN)
    store.conflicts = 1_000
    with pytest.raises(ConcurrencyConflict):
        await keys.revoke(key.key_id, actor=ADMIN)
