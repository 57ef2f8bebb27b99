"""Small, short-lived values in JetStream key-value buckets (an agent's last heartbeat).

Not events: a value is replaced on every put, and a bucket's entries expire ``ttl``
seconds after their last put (the bucket's max age, fixed when it is first created).
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from chiffon.eventstore.errors import EventStoreUnavailable

_UNAVAILABLE = (nats.errors.TimeoutError, nats.errors.NoRespondersError)


class KeyValues:
    """One handle per bucket, opened (or created with its TTL) on first use."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._buckets: dict[str, KeyValue] = {}
        # Copies of a bucket created here (the event store's setup sets its streams').
        self.replicas = 1

    async def _open(self, bucket: str) -> KeyValue | None:
        """The bucket, or None when nobody has put anything in it yet."""
        found = self._buckets.get(bucket)
        if found is None:
            try:
                found = await self._js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                return None
            self._buckets[bucket] = found
        return found

    async def _bucket(self, bucket: str, ttl: float) -> KeyValue:
        found = await self._open(bucket)
        if found is None:
            # Creating an existing bucket with the same settings succeeds: two
            # processes may race here.
            found = await self._js.create_key_value(
                bucket=bucket, history=1, ttl=ttl, replicas=self.replicas
            )
            self._buckets[bucket] = found
        return found

    async def put(self, bucket: str, key: str, value: bytes, *, ttl: float) -> None:
        try:
            await (await self._bucket(bucket, ttl)).put(key, value)
        except _UNAVAILABLE as error:
            raise EventStoreUnavailable(f"storing {key} in {bucket}: {error}") from None

    async def get(self, bucket: str, key: str) -> bytes | None:
        try:
            found = await self._open(bucket)
            if found is None:
                return None
            entry = await found.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except _UNAVAILABLE as error:
            raise EventStoreUnavailable(f"reading {key} from {bucket}: {error}") from None
        return bytes(entry.value or b"")

    async def delete(self, bucket: str, key: str) -> None:
        try:
            found = await self._open(bucket)
            if found is not None:
                await found.delete(key)
        except _UNAVAILABLE as error:
            raise EventStoreUnavailable(f"deleting {key} from {bucket}: {error}") from None
