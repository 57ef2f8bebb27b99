"""Delivery verification: Standard Webhooks signatures made by the reference package,
WhatsApp's X-Hub-Signature-256 and GET check, Telegram's secret token, and the
delivery id and chat id each scheme's payload gives."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from chiffon.trigger.trigger_domain import standard_webhooks_key
from chiffon.trigger.verify import (
    NoDeliveryId,
    NotADelivery,
    Unverified,
    standard_webhook,
    telegram_facts,
    verify_standard,
    verify_telegram,
    verify_whatsapp,
    whatsapp_challenge,
    whatsapp_facts,
)

OLD = "whsec_" + base64.b64encode(b"the-old-secret-of-24-byte").decode()
NEW = "whsec_" + base64.b64encode(b"the-new-secret-of-24-byte").decode()
NOW = 1_800_000_000
BODY = b'{"issue": {"title": "broken"}}'


def signed(secret: str, *, at: int = NOW, msg_id: str = "msg_1") -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, UTC), BODY)
    return {"webhook-id": msg_id, "webhook-timestamp": str(at), "webhook-signature": signature}


def verifiers(*secrets: str) -> list[Webhook]:
    return [standard_webhook(standard_webhooks_key(secret)) for secret in secrets]


def test_a_signature_made_by_the_reference_package_verifies() -> None:
    assert verify_standard(verifiers(NEW), signed(NEW), BODY, now=NOW, tolerance=300) == "msg_1"


def test_both_secrets_verify_during_a_rotation_and_a_rotated_out_one_does_not() -> None:
    during = verifiers(NEW, OLD)
    assert verify_standard(during, signed(OLD), BODY, now=NOW, tolerance=300) == "msg_1"
    assert verify_standard(during, signed(NEW), BODY, now=NOW, tolerance=300) == "msg_1"
    with pytest.raises(Unverified, match="no webhook-signature matches"):
        verify_standard(verifiers(NEW), signed(OLD), BODY, now=NOW, tolerance=300)


def test_a_raw_secret_is_used_as_its_bytes() -> None:
    raw = "a-raw-secret-without-prefix"
    headers = signed("whsec_" + base64.b64encode(raw.encode()).decode())
    assert verify_standard(verifiers(raw), headers, BODY, now=NOW, tolerance=300) == "msg_1"


def test_one_of_several_signatures_may_match() -> None:
    headers = signed(NEW)
    headers["webhook-signature"] = "v1,bm90IGl0 " + headers["webhook-signature"]
    assert verify_standard(verifiers(NEW), headers, BODY, now=NOW, tolerance=300) == "msg_1"


@pytest.mark.parametrize(
    ("at", "message"), [(NOW - 301, "old"), (NOW + 301, "future")], ids=["stale", "future"]
)
def test_a_timestamp_outside_the_tolerance_is_refused(at: int, message: str) -> None:
    with pytest.raises(Unverified, match=message):
        verify_standard(verifiers(NEW), signed(NEW, at=at), BODY, now=NOW, tolerance=300)


def test_a_changed_body_or_missing_header_is_refused() -> None:
    with pytest.raises(Unverified):
        verify_standard(verifiers(NEW), signed(NEW), BODY + b" ", now=NOW, tolerance=300)
    headers = signed(NEW)
    del headers["webhook-id"]
    with pytest.raises(Unverified, match="required"):
        verify_standard(verifiers(NEW), headers, BODY, now=NOW, tolerance=300)
    with pytest.raises(Unverified, match="Unix time"):
        verify_standard(
            verifiers(NEW),
            {**signed(NEW), "webhook-timestamp": "soon"},
            BODY,
            now=NOW,
            tolerance=300,
        )


def test_whatsapp_signature() -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    good = "sha256=" + hmac.new(secret, BODY, hashlib.sha256).hexdigest()
    verify_whatsapp([secret], {"x-hub-signature-256": good}, BODY)
    with pytest.raises(Unverified):
        verify_whatsapp([secret], {"x-hub-signature-256": good}, BODY + b"x")
    with pytest.raises(Unverified, match="required"):
        verify_whatsapp([secret], {}, BODY)


def test_whatsapp_subscription_check() -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": "tok-123", "hub.challenge": "42"}
    assert whatsapp_challenge("tok-123", params) == "42"
    with pytest.raises(Unverified, match="does not match"):
        whatsapp_challenge("other", params)
    with pytest.raises(Unverified, match="subscription"):
        whatsapp_challenge("tok-123", {**params, "hub.mode": "unsubscribe"})


def test_telegram_secret_token() -> None:
    verify_telegram(
        [b"telegram-secret-token-1"], {"x-telegram-bot-api-secret-token": "telegram-secret-token-1"}
    )
    with pytest.raises(Unverified):
        verify_telegram([b"telegram-secret-token-1"], {"x-telegram-bot-api-secret-token": "nope"})
    with pytest.raises(Unverified, match="required"):
        verify_telegram([b"telegram-secret-token-1"], {})


def whatsapp_message(**value: object) -> dict[str, object]:
    return {"object": "whatsapp_business_account", "entry": [{"changes": [{"value": value}]}]}


def test_whatsapp_facts() -> None:
    payload = whatsapp_message(
        metadata={"phone_number_id": "1055"},
        messages=[{"id": "wamid.ABC", "from": "4917600", "text": {"body": "hi"}}],
    )
    assert whatsapp_facts(payload) == ("wamid.ABC", "1055:4917600")
    with pytest.raises(NotADelivery):
        whatsapp_facts(whatsapp_message(statuses=[{"id": "wamid.X", "status": "read"}]))
    with pytest.raises(NoDeliveryId):
        whatsapp_facts({"entry": []})


def test_telegram_facts() -> None:
    update = {"update_id": 9001, "message": {"chat": {"id": -100123}, "text": "hi"}}
    assert telegram_facts(update) == ("9001", "-100123")
    query = {"update_id": 9002, "callback_query": {"message": {"chat": {"id": 7}}}}
    assert telegram_facts(query) == ("9002", "7")
    with pytest.raises(NoDeliveryId):
        telegram_facts({"message": {}})
    with pytest.raises(NoDeliveryId):
        telegram_facts({"update_id": True})
