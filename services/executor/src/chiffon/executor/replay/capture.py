"""The event store a replay writes to: one process's memory, events kept as objects.

It keeps what the engine relies on from a store (per-aggregate versions checked on
append, message-id idempotency, reads of an aggregate, objects by name) and skips what
a replay has no use for: ``InMemoryEventStore`` encodes every event to JSON on append
and decodes it on read, to behave byte for byte like JetStream, which cost about a
tenth of a replayed node's CPU. Nothing here is ever read by another process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from chiffon.events import CATALOG, Envelope
from chiffon.eventstore import (
    AggregateKey,
    AppendResult,
    ConcurrencyConflict,
    RecordedEvent,
    Streams,
)
from chiffon.eventstore.model import _Any

STREAM = "REPLAY"
_set = object.__setattr__
_PLAIN: dict[Any, bool] = {}  # whether a model can be made by ``construct``


def construct(model: Any, values: dict[str, Any]) -> Any:
    """``model.model_construct(**values)`` when ``values`` holds every field by its own
    name: the instance is made as pydantic makes it (its ``__dict__``, the fields set, no
    extra, no private attributes), without its loop over each field's aliases and
    defaults. A model with aliases, a post-init hook, private attributes or extra fields
    goes through ``model_construct`` itself."""
    plain = _PLAIN.get(model)
    if plain is None:
        plain = _PLAIN[model] = (
            not model.__pydantic_root_model__
            and model.__pydantic_post_init__ is None
            and not model.__private_attributes__
            and model.model_config.get("extra") != "allow"
            and all(
                field.alias in (None, name) and field.validation_alias in (None, name)
                for name, field in model.__pydantic_fields__.items()
            )
        )
    if not plain or values.keys() != model.__pydantic_fields__.keys():
        return model.model_construct(**values)
    instance = model.__new__(model)
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


class CaptureStore:
    """The parts of the ``EventStore`` port a run's execution uses (see the module)."""

    def __init__(self, namespace: str = "replay") -> None:
        self.catalog = CATALOG
        self.streams = Streams(namespace)
        self._sequence = 0
        self._aggregates: dict[AggregateKey, list[RecordedEvent]] = defaultdict(list)
        self._msg_ids: dict[object, int] = {}  # idempotency keys, else event ids
        self._objects: dict[tuple[str, str], bytes] = {}

    async def append(
        self,
        key: AggregateKey,
        events: Sequence[Envelope[Any]],
        expected_version: int | _Any | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        held = self._aggregates[key]
        version = held[-1].sequence if held else 0
        if isinstance(expected_version, int) and expected_version != version:
            raise ConcurrencyConflict(key.aggregate, key.aggregate_id, expected_version, version)
        sequences: list[int] = []
        duplicates: list[bool] = []
        for index, envelope in enumerate(events):
            # The event id itself, not its text: formatting a UUID was 3% of a replay.
            msg_id = f"{idempotency_key}:{index}" if idempotency_key else envelope.event_id
            earlier = self._msg_ids.get(msg_id)
            if earlier is not None:
                sequences.append(earlier)
                duplicates.append(True)
                continue
            self._sequence += 1
            self._msg_ids[msg_id] = self._sequence
            held.append(RecordedEvent(envelope, STREAM, self._sequence, envelope.type))
            sequences.append(self._sequence)
            duplicates.append(False)
        return AppendResult(tuple(sequences), tuple(duplicates))

    async def read_aggregate(
        self, key: AggregateKey, *, after: int = 0
    ) -> tuple[list[RecordedEvent], int]:
        events = [e for e in self._aggregates.get(key, ()) if e.sequence > after]
        return events, (events[-1].sequence if events else after)

    async def aggregate_version(self, key: AggregateKey) -> int:
        held = self._aggregates.get(key)
        return held[-1].sequence if held else 0

    async def put_object(self, bucket: str, name: str, data: bytes) -> None:
        self._objects[(bucket, name)] = data

    async def get_object(self, bucket: str, name: str) -> bytes:
        return self._objects[(bucket, name)]

    async def publish(self, subject: str, data: bytes) -> None:
        return None  # live output of a replayed task: nobody listens
