"""The JetStream event store passes the conformance suite every store passes."""

from __future__ import annotations

from tests.conformance.eventstore_suite import EventStoreConformance


class TestJetStreamEventStore(EventStoreConformance):
    pass
