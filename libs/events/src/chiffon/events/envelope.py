"""The envelope every event travels in, and the base class of every payload."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from uuid_utils import compat

from chiffon.events.limits import ACTOR_ID_MAX_CHARS, ACTOR_NAME_MAX_CHARS

# Aggregate ids become NATS subject tokens, so they must not contain '.', '*', '>' or
# white space. UUIDs, slugs and hashes all fit.
AGGREGATE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_AGGREGATE_ID = re.compile(AGGREGATE_ID_PATTERN)


def uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7)."""
    return compat.uuid7()


def is_valid_aggregate_id(value: str) -> bool:
    return bool(_AGGREGATE_ID.match(value))


class EventPayload(BaseModel):
    """Base of every event payload. Subclasses name their type, version and aggregate.

    Payloads are facts in the past tense (``NodeCompleted``), frozen once made.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    aggregate: ClassVar[str]


class Actor(BaseModel):
    """Who caused an event: a user, an API key, or a service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["user", "api_key", "service", "system"]
    id: str = Field(min_length=1, max_length=ACTOR_ID_MAX_CHARS)
    name: str | None = Field(default=None, max_length=ACTOR_NAME_MAX_CHARS)

    @classmethod
    def service(cls, name: str, replica: int | None = None) -> Actor:
        ident = name if replica is None else f"{name}-{replica}"
        return cls(kind="service", id=ident, name=ident)

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}" + (
            f" ({self.name})" if self.name and self.name != self.id else ""
        )


def actor_label(actor: Actor) -> str:
    """``<kind>:<id>``: how read models record who did something. Never longer than
    ``ACTOR_LABEL_MAX_CHARS``, the width of every column that holds one."""
    return f"{actor.kind}:{actor.id}"


P = TypeVar("P", bound=EventPayload)


class _EnvelopeFields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=100)
    schema_version: int = Field(ge=1)
    aggregate: str = Field(pattern=r"^[a-z][a-z0-9_]{0,30}$")
    aggregate_id: str = Field(pattern=AGGREGATE_ID_PATTERN)
    occurred_at: AwareDatetime
    correlation_id: str | None = Field(default=None, max_length=200)
    causation_id: str | None = Field(default=None, max_length=200)
    actor: Actor
    trace: str | None = Field(default=None, max_length=200)

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


class Envelope(_EnvelopeFields, Generic[P]):
    """An event with its typed payload."""

    payload: P


class RawEnvelope(_EnvelopeFields):
    """An envelope as stored, payload not yet upcast nor validated."""

    payload: dict[str, Any]


# Envelope[Model] per payload model: parametrising a generic model costs microseconds.
_ENVELOPES: dict[type[EventPayload], Any] = {}


def new_event(
    payload: P,
    *,
    aggregate_id: str,
    actor: Actor,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    trace: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope[P]:
    """Wrap a payload in a fresh envelope: new event id, now, the payload's own type."""
    envelope_type: Any = _ENVELOPES.get(type(payload))
    if envelope_type is None:
        envelope_type = _ENVELOPES[type(payload)] = Envelope[type(payload)]  # type: ignore[misc]
    return envelope_type(  # type: ignore[no-any-return]
        event_id=uuid7(),
        type=payload.event_type,
        schema_version=payload.schema_version,
        aggregate=payload.aggregate,
        aggregate_id=aggregate_id,
        occurred_at=occurred_at or datetime.now(UTC),
        correlation_id=correlation_id,
        causation_id=causation_id,
        actor=actor,
        trace=trace,
        payload=payload,
    )
