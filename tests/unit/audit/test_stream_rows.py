"""The audit index's rows for events of the streams other than RUNS, the search's order
across streams, and its cursors: pure functions on events made in memory."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chiffon.audit.ordering import order_times
from chiffon.audit.search import (
    CONTEXTS,
    AuditFilter,
    InvalidCursor,
    Position,
    decode_cursor,
    encode_cursor,
)
from chiffon.audit.streams import AUDITED_TYPES, STREAM_PROJECTIONS, stream_row
from chiffon.events import Envelope
from chiffon.eventstore import RecordedEvent
from tests.unit.audit.sample import T0
from tests.unit.audit.stream_sample import (
    SECRETS,
    agent_events,
    budget_events,
    key_events,
    trigger_events,
    workflow_events,
)


def recorded(envelopes: list[Envelope[Any]], stream: str) -> list[RecordedEvent]:
    return [
        RecordedEvent(e, stream, n, f"chiffon.{e.aggregate}.{e.aggregate_id}.{e.type}")
        for n, e in enumerate(envelopes, start=1)
    ]


def rows(envelopes: list[Envelope[Any]], context: str) -> list[dict[str, Any]]:
    """The rows the stream's projection writes: the audited types only."""
    audited = AUDITED_TYPES[context]
    events = [e for e in recorded(envelopes, context) if audited is None or e.type in audited]
    times = order_times(None, events)
    return [stream_row(event, at) for event, at in zip(events, times, strict=True)]


def picked(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["type"], row["aggregate"], row["aggregate_id"], row["actor"], row["name"])


def test_each_audited_event_names_its_thing_and_its_actor() -> None:
    assert [picked(r) for r in rows(key_events(), "KEYS")] == [
        # A NUL in a name (legal in an event) is made U+FFFD, never a failed insert.
        ("apikey.created", "apikey", "key-1", "api_key:key-admin", "ci\ufffdbot"),
        ("apikey.revoked", "apikey", "key-1", "api_key:key-admin", None),
    ]
    [budget] = rows(budget_events(), "COSTS")  # the ledger's reservation is left out
    assert picked(budget) == (
        "budget.set",
        "budget",
        "workflow_triage",
        "api_key:key-admin",
        "triage",
    )
    agents = rows(agent_events(), "AGENTS")  # agent.came_back (liveness) is left out
    assert [(r["type"], r["name"], r["agent_id"]) for r in agents] == [
        ("agent.credential.issued", "homelab", None),
        ("agent.registered", "homelab", "homelab.nas"),
        ("agent.deregistered", None, "homelab-nas"),
    ]
    triggers = rows(trigger_events(), "TRIGGERS")
    assert [(r["type"], r["name"], r["workflow"], r["version"]) for r in triggers] == [
        ("trigger.created", "issues", "triage", 3),
        ("trigger.secrets_set", None, None, None),
        ("schedule.created", "nightly", "backup", None),
    ]
    [workflow] = rows(workflow_events(), "WORKFLOWS")
    assert (workflow["name"], workflow["workflow"], workflow["version"]) == ("triage", "triage", 3)


def test_no_secret_reaches_a_row() -> None:
    everything = [
        *rows(key_events(), "KEYS"),
        *rows(budget_events(), "COSTS"),
        *rows(agent_events(), "AGENTS"),
        *rows(trigger_events(), "TRIGGERS"),
        *rows(workflow_events(), "WORKFLOWS"),
    ]
    text = repr(everything)
    assert [secret for secret in SECRETS if secret in text] == []
    assert "very-private" not in text and "10.0.0.2" not in text


def test_high_volume_events_are_not_subscribed_to() -> None:
    for projection in STREAM_PROJECTIONS:
        types = projection.event_types or frozenset()
        assert not {t for t in types if t.startswith(("cost.", "webhook."))}
        assert not types & {"budget.reserved", "budget.settled", "agent.went_offline"}
        assert not types & {"schedule.fired", "schedule.tick_skipped", "agent.came_back"}
    assert {p.context for p in STREAM_PROJECTIONS} == set(CONTEXTS) - {"RUNS"}


def test_order_follows_the_stream_when_a_clock_is_behind() -> None:
    envelopes = key_events()
    late, early = envelopes[0], envelopes[1].model_copy(update={"occurred_at": T0})
    times = order_times(None, recorded([late, early], "KEYS"))
    assert times == [late.occurred_at, late.occurred_at]  # never before the one before
    after = late.occurred_at + timedelta(hours=1)
    assert order_times(after, recorded([late], "KEYS")) == [after]


@pytest.mark.parametrize(
    "position",
    [
        Position(datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC), "KEYS", 1),
        Position(datetime(1, 1, 1, tzinfo=UTC), "RUNS", 2**63 - 1),
        Position(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "WORKFLOWS", 0),
    ],
)
def test_a_cursor_gives_back_its_position(position: Position) -> None:
    cursor = encode_cursor(position)
    assert len(cursor) <= 100  # what the API accepts
    assert decode_cursor(cursor) == position


def _coded(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _coded("audit:10"),  # the run-only search's cursors: a place in one stream only
        _coded("audit2:0:MEMORY:1"),  # a stream the search does not cover
        _coded("audit2:0:KEYS:99999999999999999999"),
        _coded("audit2:9999999999999999999:KEYS:1"),  # past the calendar
        _coded("audit2:x:KEYS:1"),
        "",
        "%%%",
        "a" * 101,
    ],
)
def test_a_cursor_not_handed_out_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


def test_filters_choose_the_streams_that_can_match() -> None:
    assert AuditFilter().contexts() == CONTEXTS
    assert AuditFilter(run_id="r1").contexts() == ("RUNS",)
    assert AuditFilter(run_id="r1", context="KEYS").contexts() == ()
    assert AuditFilter(context="KEYS").contexts() == ("KEYS",)
    assert AuditFilter(context="MEMORY").contexts() == ()
