"""The envelope and the catalog: types, validation, and loading old events by upcasting."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import ClassVar

import pytest

from chiffon.events import CATALOG, Actor, Catalog, EventPayload, EventValidationError, new_event
from chiffon.events.agents import AgentRegistered, AgentWentOffline

ACTOR = Actor(kind="api_key", id="key_1", name="ci")


def test_new_event_fills_the_envelope_from_the_payload() -> None:
    event = new_event(
        AgentRegistered(name="gpu-box", host="gpu-box", address="gpu-box:50051"),
        aggregate_id="agent-1",
        actor=ACTOR,
        correlation_id="req-1",
    )
    assert event.type == "agent.registered"
    assert event.aggregate == "agent"
    assert event.schema_version == 1
    assert event.event_id.version == 7
    assert event.occurred_at.tzinfo is not None


def test_an_event_round_trips_through_json_with_its_typed_payload() -> None:
    event = new_event(AgentWentOffline(reason="ttl expired"), aggregate_id="a1", actor=ACTOR)
    decoded = CATALOG.decode(event.model_dump_json())
    assert isinstance(decoded.payload, AgentWentOffline)
    assert decoded.payload.reason == "ttl expired"
    assert decoded.event_id == event.event_id
    assert decoded.actor == ACTOR


def test_occurred_at_is_normalised_to_utc() -> None:
    from datetime import timedelta, timezone

    local = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = new_event(
        AgentWentOffline(reason="x"), aggregate_id="a1", actor=ACTOR, occurred_at=local
    )
    assert event.occurred_at == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_every_catalog_type_is_dotted_and_unique() -> None:
    types = CATALOG.types()
    assert len(types) == len(set(types))
    assert all("." in t for t in types)


def test_aggregate_ids_that_would_break_nats_subjects_are_refused() -> None:
    for bad in ["a.b", "a b", "a>", "*", "", "x" * 129]:
        with pytest.raises(ValueError):
            new_event(AgentWentOffline(reason="x"), aggregate_id=bad, actor=ACTOR)


def test_a_payload_that_does_not_match_its_model_is_refused_with_the_field() -> None:
    with pytest.raises(EventValidationError, match="reason"):
        CATALOG.build("agent.went_offline", {"reason": 42})


def test_decoding_an_unknown_type_says_so() -> None:
    raw = new_event(AgentWentOffline(reason="x"), aggregate_id="a1", actor=ACTOR).model_dump(
        mode="json"
    )
    raw["type"] = "agent.teleported"
    with pytest.raises(LookupError, match="agent.teleported"):
        CATALOG.decode(json.dumps(raw))


def test_malformed_stored_json_gets_a_clear_error() -> None:
    with pytest.raises(EventValidationError, match="envelope"):
        CATALOG.decode(b"{not json")


class NodeFinishedV2(EventPayload):
    """Version 2 renamed ``result`` to ``outputs`` and made it a mapping."""

    event_type: ClassVar[str] = "test.node_finished"
    schema_version: ClassVar[int] = 2
    aggregate: ClassVar[str] = "run"

    node_id: str
    outputs: dict[str, str]


def test_a_v1_event_loads_as_today_s_model_through_an_upcaster() -> None:
    catalog = Catalog([NodeFinishedV2])

    @catalog.upcaster("test.node_finished", 1)
    def v1_to_v2(payload: dict[str, object]) -> dict[str, object]:
        return {"node_id": payload["node_id"], "outputs": {"text": payload.pop("result")}}

    stored_v1 = {
        "event_id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "type": "test.node_finished",
        "schema_version": 1,
        "aggregate": "run",
        "aggregate_id": "run-1",
        "occurred_at": "2025-03-01T10:00:00Z",
        "actor": {"kind": "service", "id": "executor-0"},
        "payload": {"node_id": "write", "result": "a draft"},
    }
    event = catalog.decode(json.dumps(stored_v1))
    assert isinstance(event.payload, NodeFinishedV2)
    assert event.payload.outputs == {"text": "a draft"}
    assert event.schema_version == 2


def test_an_old_event_without_an_upcaster_is_refused_not_guessed() -> None:
    catalog = Catalog([NodeFinishedV2])
    stored = new_event(AgentWentOffline(reason="x"), aggregate_id="a1", actor=ACTOR).model_dump(
        mode="json"
    )
    stored.update(
        type="test.node_finished", schema_version=1, aggregate="run", payload={"node_id": "n"}
    )
    with pytest.raises(EventValidationError, match="no upcaster from schema_version 1"):
        catalog.decode(json.dumps(stored))


def test_settings_mask_secrets_when_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    from chiffon.core.settings import ChiffonSettings

    monkeypatch.setenv("CHIFFON_DATABASE_URL", "postgresql://app:s3cret@db:5432/chiffon")
    monkeypatch.setenv("CHIFFON_NATS_URL", "nats://user:pw@nats:4222")
    shown = ChiffonSettings().masked()
    assert "s3cret" not in json.dumps(shown)
    assert "pw@" not in json.dumps(shown)
    assert shown["database_url"] == "postgresql://app:***@db:5432/chiffon"


def test_settings_come_from_a_toml_file_and_env_wins(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chiffon.core.settings import ChiffonSettings

    config = tmp_path / "chiffon.toml"
    config.write_text('namespace = "fromfile"\nlog_level = "debug"\n')
    monkeypatch.setenv("CHIFFON_CONFIG_FILE", str(config))
    monkeypatch.setenv("CHIFFON_LOG_LEVEL", "warning")
    settings = ChiffonSettings()
    assert settings.namespace == "fromfile"
    assert settings.log_level == "warning"
