"""Chiffon's event envelope and the catalog of every event type."""

from chiffon.events.catalog import CATALOG
from chiffon.events.envelope import (
    Actor,
    Envelope,
    EventPayload,
    RawEnvelope,
    actor_label,
    new_event,
    uuid7,
)
from chiffon.events.registry import Catalog, EventValidationError, UnknownEventType

__all__ = [
    "CATALOG",
    "Actor",
    "Catalog",
    "Envelope",
    "EventPayload",
    "EventValidationError",
    "RawEnvelope",
    "UnknownEventType",
    "actor_label",
    "new_event",
    "uuid7",
]
