"""The trigger aggregate's decisions and validation, and the delivery → inputs mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chiffon.events import Actor, new_event
from chiffon.events.triggers import TriggerCreated, TriggerDisabled, TriggerSecretsSet
from chiffon.trigger.trigger_domain import (
    TriggerExists,
    TriggerInvalid,
    TriggerNotFound,
    TriggerState,
    answer,
    decide_create,
    decide_disable,
    decide_enable,
    decide_set_secrets,
    evolve,
    parse_source,
    resolve_inputs,
    validate_create,
)

SECRET = "whsec_" + "c2l4dGVlbi1ieXRlcy1zZWNyZXQ="  # "sixteen-bytes-secret"
AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def encrypt(secret: str) -> str:
    return f"enc({secret})"


def create(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "trigger": "gh-issues",
        "workflow": "triage",
        "version": None,
        "scheme": "standard-webhooks",
        "secrets": [SECRET],
        "verify_token": None,
        "inputs": {"title": "/issue/title"},
        "reply": None,
    }
    return {**fields, **changes}


def paths(error: TriggerInvalid) -> list[str]:
    return [detail["path"] for detail in error.details]


def fold(state: TriggerState, *payloads: Any) -> TriggerState:
    for sequence, payload in enumerate(payloads, start=state.version + 1):
        envelope = new_event(
            payload, aggregate_id=state.name, actor=Actor.service("trigger"), occurred_at=AT
        )
        state = evolve(state, envelope, sequence)
    return state


def test_create_then_disable_enable_and_rotate() -> None:
    new = validate_create(**create())
    state = fold(TriggerState("gh-issues"), *decide_create(TriggerState("gh-issues"), new, encrypt))
    assert state.open and state.secrets_encrypted == (f"enc({SECRET})",)
    with pytest.raises(TriggerExists):
        decide_create(state, new, encrypt)
    state = fold(state, *decide_disable(state, "noisy"))
    assert not state.open and state.disabled_reason == "noisy"
    assert decide_disable(state, None) == []
    state = fold(state, *decide_enable(state))
    assert state.open and decide_enable(state) == []
    rotated = "a-raw-secret-of-enough-length"
    state = fold(state, *decide_set_secrets(state, [rotated, SECRET], encrypt))
    shown = answer(state, deliveries=3, last_delivery_at=AT)
    assert shown["secrets"] == 2 and shown["hook_path"] == "/hooks/gh-issues"
    assert shown["deliveries"] == 3 and shown["last_delivery_at"] == AT.isoformat()
    assert SECRET not in str(shown) and rotated not in str(shown)


def test_commands_on_a_missing_trigger_are_not_found() -> None:
    missing = TriggerState("nope")
    with pytest.raises(TriggerNotFound):
        decide_disable(missing, None)
    with pytest.raises(TriggerNotFound):
        decide_enable(missing)
    with pytest.raises(TriggerNotFound):
        decide_set_secrets(missing, [SECRET], encrypt)


def test_every_bad_field_is_named() -> None:
    with pytest.raises(TriggerInvalid) as refused:
        validate_create(
            **create(
                trigger="Bad Name",
                workflow="Triage!",
                version=0,
                scheme="github",
                inputs={"1x": "/a", "ok": "title"},
                reply={"output": "answer", "token": "t"},
                verify_token="only-whatsapp",
            )
        )
    assert paths(refused.value) == [
        "trigger",
        "workflow",
        "version",
        "scheme",
        "verify_token",
        "inputs.1x",
        "inputs.ok",
        "reply",
    ]


@pytest.mark.parametrize(
    ("secrets", "path"),
    [
        ([], "secrets"),
        (["short"], "secrets.0"),
        (["whsec_%%%notbase64"], "secrets.0"),
        (["whsec_c2hvcnQ="], "secrets.0"),  # decodes to 5 bytes
        ([SECRET, SECRET], "secrets.1"),
        ([f"secret-number-{i:04d}" for i in range(6)], "secrets"),
    ],
)
def test_secret_rules(secrets: list[str], path: str) -> None:
    with pytest.raises(TriggerInvalid) as refused:
        validate_create(**create(secrets=secrets))
    assert path in paths(refused.value)


def test_whatsapp_needs_a_verify_token_and_may_reply() -> None:
    with pytest.raises(TriggerInvalid) as refused:
        validate_create(**create(scheme="whatsapp", secrets=["0123456789abcdef0123"]))
    assert paths(refused.value) == ["verify_token"]
    new = validate_create(
        **create(
            scheme="whatsapp",
            secrets=["0123456789abcdef0123"],
            verify_token="tok",
            reply={"output": "answer", "token": "EAAG-token"},
        )
    )
    (created,) = decide_create(TriggerState("gh-issues"), new, encrypt)
    assert isinstance(created, TriggerCreated)
    assert created.reply is not None and created.reply.output == "answer"
    assert created.reply_token_encrypted == "enc(EAAG-token)"
    assert created.verify_token_encrypted == "enc(tok)"


def test_a_telegram_secret_has_telegram_characters() -> None:
    with pytest.raises(TriggerInvalid) as refused:
        validate_create(**create(scheme="telegram", secrets=["has spaces in it, sadly"]))
    assert paths(refused.value) == ["secrets.0"]


def test_a_secrets_set_event_replaces_the_secrets() -> None:
    state = fold(
        TriggerState("t"),
        TriggerCreated(name="t", workflow="w", scheme="telegram", secrets_encrypted=["a"]),
        TriggerSecretsSet(secrets_encrypted=["b", "a"]),
        TriggerDisabled(reason=None),
    )
    assert state.secrets_encrypted == ("b", "a") and not state.enabled and state.version == 3


def test_sources() -> None:
    assert parse_source("/a~1b/c~0d").tokens == ("a/b", "c~d")
    assert parse_source("header:X-GitHub-Event").header == "x-github-event"
    for bad in ("title", "/a~2", "header:", "delivery:when"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_inputs_from_a_delivery() -> None:
    sources = {
        name: parse_source(text)
        for name, text in {
            "title": "/issue/title",
            "first": "/labels/0",
            "gone": "/issue/missing",
            "past_end": "/labels/5",
            "event": "header:X-Event",
            "absent_header": "header:X-None",
            "id": "delivery:id",
            "at": "delivery:received_at",
            "whole": "",
        }.items()
        if text
    }
    body = {"issue": {"title": "broken"}, "labels": ["bug"]}
    inputs = resolve_inputs(sources, body, {"x-event": "issues"}, "d-1", AT)
    assert inputs == {
        "title": "broken",
        "first": "bug",
        "event": "issues",
        "id": "d-1",
        "at": AT.isoformat(),
    }
