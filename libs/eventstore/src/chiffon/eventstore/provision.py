"""Create or update every stream of a namespace, before any service starts.

What ``chiffon migrate`` (a deployment's one-off job) and the dev stack's ``up`` run;
services also call ``JetStreamEventStore.setup`` at start, so this is the same code
run once, ahead of time, with a clear error instead of a crashing service.
"""

from __future__ import annotations

from chiffon.events import CATALOG
from chiffon.eventstore.errors import EventStoreError
from chiffon.eventstore.jetstream import JetStreamEventStore


async def create_streams(
    nats_url: str,
    namespace: str,
    *,
    replicas: int = 1,
    duplicate_window: float = 120.0,
    name: str = "chiffon-migrate",
) -> None:
    """Create or update every JetStream stream of ``namespace``. Idempotent.

    Raises ``EventStoreError`` (never a raw NATS error) when NATS refuses or is away.
    """
    try:
        async with JetStreamEventStore.connect(
            nats_url, CATALOG, namespace=namespace, name=name
        ) as store:
            await store.setup(replicas=replicas, duplicate_window=duplicate_window)
    except EventStoreError:
        raise
    except Exception as error:  # nats.js errors: one clear line, not a traceback
        raise EventStoreError(f"cannot create streams: {type(error).__name__}: {error}") from None
