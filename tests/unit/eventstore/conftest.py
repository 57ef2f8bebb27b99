"""The in-memory event store, fresh for each test."""

from __future__ import annotations

import pytest

from chiffon.events import CATALOG
from chiffon.eventstore import InMemoryEventStore


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore(CATALOG, namespace="unit")
