"""Node outputs too large for an event, stored by reference in the event store's object
store (JetStream's on NATS): the ``run.node.completed`` event names them (``outputs_ref``)."""

from __future__ import annotations

import json
from typing import Any

from chiffon.eventstore import EventStore


class OutputStore:
    """Large node outputs as JSON objects in one bucket per namespace."""

    def __init__(self, store: EventStore, namespace: str) -> None:
        self.store = store
        self.bucket = f"{namespace.upper()}_RUN_OUTPUTS"

    async def put(self, name: str, outputs: dict[str, Any]) -> str:
        data = json.dumps(outputs, ensure_ascii=False).encode()
        await self.store.put_object(self.bucket, name, data)
        return name

    async def get(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(await self.store.get_object(self.bucket, name))
        return data
