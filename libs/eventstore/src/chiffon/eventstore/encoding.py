"""Checking an event against the catalog and serialising it: the same for every store,
and done before any I/O, so a bad event is refused whole and nothing is half-stored."""

from __future__ import annotations

from typing import Any

from chiffon.core.telemetry import current_traceparent
from chiffon.events import Catalog, Envelope, EventValidationError
from chiffon.eventstore.model import AggregateKey

MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"


def encode_event(catalog: Catalog, key: AggregateKey, event: Envelope[Any]) -> bytes:
    """The event's stored bytes, or ``EventValidationError`` (wrong aggregate, a type or
    schema version the catalog does not know, an invalid payload)."""
    if (event.aggregate, event.aggregate_id) != (key.aggregate, key.aggregate_id):
        raise EventValidationError(
            event.type,
            f"belongs to {event.aggregate}/{event.aggregate_id}, not {key}",
        )
    catalog.check(event)
    try:
        # Re-validate: a payload built with model_construct skips validation.
        type(event.payload).model_validate(event.payload.__dict__)
    except Exception as error:  # pydantic.ValidationError, described by the catalog
        raise EventValidationError(event.type, str(error).splitlines()[0]) from None
    return event.model_dump_json().encode()


def batch_trace(events: Any) -> str | None:
    """The trace to stamp on events that carry none: looked up once per append, and not
    at all when every event carries its own (an executor's do)."""
    return None if all(event.trace for event in events) else current_traceparent()


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    wanted = pattern.split(".")
    parts = subject.split(".")
    for index, part in enumerate(wanted):
        if part == ">":
            return len(parts) > index
        if index >= len(parts) or (part != "*" and part != parts[index]):
            return False
    return len(parts) == len(wanted)
