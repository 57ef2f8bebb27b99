"""Large payloads in JetStream object store buckets, referred to from events by name."""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig
from nats.js.object_store import ObjectStore

from chiffon.eventstore.errors import EventStoreUnavailable
from chiffon.eventstore.port import ObjectNotFound


class Objects:
    """One handle per bucket, opened (or created) on first use."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._buckets: dict[str, ObjectStore] = {}
        # Copies of a bucket created here (the event store's setup sets its streams').
        self.replicas = 1

    async def _bucket(self, bucket: str) -> ObjectStore:
        found = self._buckets.get(bucket)
        if found is None:
            try:
                found = await self._js.object_store(bucket)
            except nats.js.errors.NotFoundError:
                found = await self._js.create_object_store(
                    bucket, config=ObjectStoreConfig(bucket=bucket, replicas=self.replicas)
                )
            self._buckets[bucket] = found
        return found

    async def put(self, bucket: str, name: str, data: bytes) -> None:
        try:
            await (await self._bucket(bucket)).put(name, data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            raise EventStoreUnavailable(f"storing {name} in {bucket}: {error}") from None

    async def get(self, bucket: str, name: str) -> bytes:
        try:
            result = await (await self._bucket(bucket)).get(name)
        except nats.js.errors.NotFoundError:  # ObjectNotFoundError, or a deleted one
            raise ObjectNotFound(f"no object {name!r} in {bucket}") from None
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
            raise EventStoreUnavailable(f"reading {name} from {bucket}: {error}") from None
        return bytes(result.data or b"")
