"""The gateway's trigger and schedule request bodies (the events' limits, no control
characters, write-only secrets) and how a run's trigger reference is shown."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from chiffon.events.triggers import delivery_aggregate_id
from chiffon.gateway.schemas import (
    ScheduleCreate,
    TriggerCreate,
    TriggerPublic,
    TriggerReplay,
)
from chiffon.gateway.settings import GatewaySettings
from chiffon.gateway.triggers import trigger_parts

BASE: dict[str, Any] = {"name": "gh", "workflow": "triage", "scheme": "standard-webhooks"}
HIDDEN = "whsec_hidden-0123456789"
NEW, OLD = "n" * 16, "o" * 16


def test_secrets_are_write_only() -> None:
    made = TriggerCreate.model_validate({**BASE, "secret": HIDDEN})
    assert made.secret_values() == [HIDDEN]
    assert HIDDEN not in repr(made) and HIDDEN not in str(made.model_dump())
    several = TriggerCreate.model_validate({**BASE, "secrets": [NEW, OLD]})
    assert several.secret_values() == [NEW, OLD]
    # The answer model has no field a secret could travel in.
    shown = TriggerPublic.model_validate(
        {**BASE, "enabled": True, "hook_path": "/hooks/gh", "hook_url": "x",
         "secrets_encrypted": ["gAAAA"], "secret": HIDDEN, "secrets": 1}
    )  # fmt: skip
    assert HIDDEN not in shown.model_dump_json() and "gAAAA" not in shown.model_dump_json()
    schema = TriggerCreate.model_json_schema()["properties"]["secret"]["anyOf"][0]
    assert schema["writeOnly"] is True and schema["format"] == "password"


@pytest.mark.parametrize(
    "change",
    [
        {"name": "GH"},
        {"name": "gh\n"},
        {"name": "-gh"},
        {"name": "g" * 64},
        {"scheme": "basic"},
        {"secret": "a\tb" + "c" * 16},
        {"secret": "\u0085" + "c" * 16},
        {"secret": "x" * 15},
        {"secret": "x" * 1001},
        {"secret": None},  # none at all
        {"secret": None, "secrets": []},
        {"secret": None, "secrets": [NEW] * 6},
        {"secret": NEW, "secrets": [OLD]},
        {"inputs": {"1st": "/a"}},
        {"inputs": {"a": ""}},
        {"verify_token": "\ud800"},
        {"reply": {"output": "a b"}},
        {"version": 0},
        {"version": True},
        {"extra": 1},
    ],
)
def test_a_bad_trigger_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        TriggerCreate.model_validate({**BASE, "secret": HIDDEN, **change})
    assert "hidden" not in str(refused.value.errors(include_input=False))


def test_a_control_character_is_named_by_position_not_by_value() -> None:
    with pytest.raises(ValidationError) as refused:
        TriggerCreate.model_validate({**BASE, "secret": "whsec_top\x07secret-0123456789"})
    messages = [e["msg"] for e in refused.value.errors()]
    assert messages == ["Value error, must not hold control characters (U+0007 at character 10)"]


@pytest.mark.parametrize(
    "change",
    [
        {"cron": ""},
        {"cron": "0 9 * * *\r"},
        {"timezone": "../etc/passwd"},
        {"timezone": "Europe/Berlin "},
        {"overlap": "never"},
        {"jitter_seconds": 3601},
        {"jitter_seconds": "5"},
        {"catchup_window_seconds": -1},
    ],
)
def test_a_bad_schedule_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ScheduleCreate.model_validate({"name": "n", "workflow": "w", "cron": "* * * * *", **change})


def test_a_schedule_takes_its_defaults() -> None:
    made = ScheduleCreate.model_validate({"name": "n", "workflow": "w", "cron": "* * * * *"})
    assert (made.timezone, made.overlap, made.jitter_seconds, made.catchup_window_seconds) == (
        "UTC",
        "skip",
        0,
        60,
    )


def test_replay_bounds() -> None:
    ok = TriggerReplay.model_validate(
        {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00+01:00"}
    )
    assert ok.from_ is not None and ok.to is not None
    for bad in (
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-01-02T00:00:00"},  # no offset
        {"from": 0},
        {"version": 2},  # a version without its workflow
        {"from_": "2026-01-02T00:00:00Z"},
    ):
        with pytest.raises(ValidationError):
            TriggerReplay.model_validate(bad)


def test_the_hook_url_is_absolute_from_the_setting() -> None:
    settings = GatewaySettings(trigger_public_url="https://hooks.example.com/chiffon/")
    assert settings.hook_url("/hooks/gh") == "https://hooks.example.com/chiffon/hooks/gh"
    assert GatewaySettings().hook_url("/hooks/gh") == "http://127.0.0.1:8403/hooks/gh"
    with pytest.raises(ValidationError):
        GatewaySettings(trigger_public_url="javascript:alert(1)")


def test_a_runs_trigger_names_its_trigger_and_delivery() -> None:
    delivery = delivery_aggregate_id("gh-issues", "msg_2a")
    webhook = trigger_parts({"kind": "webhook", "id": delivery})
    assert (webhook.kind, webhook.name, webhook.detail) == ("webhook", "gh-issues", delivery)
    assert webhook.anchor == "trigger-gh-issues"
    tick = trigger_parts({"kind": "schedule", "id": "nightly@2026-12-07T02:30:00Z"})
    assert (tick.name, tick.detail, tick.anchor) == (
        "nightly",
        "2026-12-07T02:30:00Z",
        "schedule-nightly",
    )
    api = trigger_parts({"kind": "api", "id": "k1"})
    assert (api.kind, api.name, api.detail, api.detail_label) == ("api", None, "k1", "key")
    odd = trigger_parts({"kind": "webhook", "id": "<script>"})
    assert odd.name is None and odd.detail == "<script>"
    assert trigger_parts(None).kind == "unknown"
