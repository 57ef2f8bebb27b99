"""Verifying deliveries, pure and constant-time, and what each scheme's delivery says
about itself (its delivery id, the chat a reply goes to).

- Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id``,
  ``webhook-timestamp`` (Unix seconds; refused when further than the tolerance from
  now, in either direction) and ``webhook-signature`` (space-separated ``v1,<base64>``
  signatures of ``<id>.<timestamp>.<body>``), signed by the ``standardwebhooks``
  package's own ``Webhook.sign`` with each active secret in turn (rotation: the old and
  the new secret both verify until the old one is dropped).
- WhatsApp Cloud API: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body
  with the app secret>``; the subscription ``GET`` answers ``hub.challenge`` when
  ``hub.mode=subscribe`` and ``hub.verify_token`` matches.
- Telegram: ``X-Telegram-Bot-Api-Secret-Token`` equals the secret given to setWebhook.

Every comparison is ``hmac.compare_digest``. Headers are looked up in lower case (a
Starlette ``Headers`` is case-insensitive; tests pass plain dicts in lower case).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from chiffon.events.triggers import DELIVERY_ID_MAX_CHARS


class Unverified(Exception):
    """The delivery is not proven to come from the sender (401)."""


class NoDeliveryId(Exception):
    """The delivery has no usable delivery id (422)."""


class NotADelivery(Exception):
    """A well-formed, verified request that starts nothing (a WhatsApp status update):
    answered 200, stored nowhere."""


def standard_webhook(key: bytes) -> Webhook:
    """The package's signer for one secret's HMAC key."""
    return Webhook(key)


def verify_standard(
    webhooks: Sequence[Webhook],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float,
) -> str:
    """The delivery's id once one of ``webhooks`` (the active secrets) signed it within
    ``tolerance`` seconds of ``now``; ``Unverified`` otherwise."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise Unverified("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        seconds = int(stamp)
    except ValueError:
        raise Unverified("webhook-timestamp is not a Unix time in seconds") from None
    if seconds < now - tolerance:
        raise Unverified(f"webhook-timestamp is more than {tolerance:g} s old")
    if seconds > now + tolerance:
        raise Unverified(f"webhook-timestamp is more than {tolerance:g} s in the future")
    timestamp = datetime.fromtimestamp(seconds, UTC)
    passed = [candidate.encode() for candidate in signatures.split(" ") if candidate]
    for webhook in webhooks:
        expected = webhook.sign(msg_id, timestamp, body).encode()
        matched = False
        for candidate in passed:
            matched |= hmac.compare_digest(expected, candidate)
        if matched:
            return _delivery_id(msg_id)
    raise Unverified("no webhook-signature matches an active secret")


def verify_whatsapp(app_secrets: Sequence[bytes], headers: Mapping[str, str], body: bytes) -> None:
    """``Unverified`` unless ``X-Hub-Signature-256`` is the body's HMAC with an app secret."""
    given = headers.get("x-hub-signature-256")
    if not given:
        raise Unverified("X-Hub-Signature-256 is required")
    candidate = given.strip().encode()
    matched = False
    for secret in app_secrets:
        expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Unverified("X-Hub-Signature-256 does not match the app secret")


def whatsapp_challenge(verify_token: str, params: Mapping[str, str]) -> str:
    """The ``hub.challenge`` to answer a subscription check with; ``Unverified`` when
    it is not one or its token is wrong."""
    token = params.get("hub.verify_token") or ""
    challenge = params.get("hub.challenge")
    if params.get("hub.mode") != "subscribe" or challenge is None:
        raise Unverified("not a subscription check (hub.mode=subscribe and hub.challenge)")
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        raise Unverified("hub.verify_token does not match")
    return challenge


def verify_telegram(tokens: Sequence[bytes], headers: Mapping[str, str]) -> None:
    given = headers.get("x-telegram-bot-api-secret-token")
    if not given:
        raise Unverified("X-Telegram-Bot-Api-Secret-Token is required")
    candidate = given.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(token, candidate)
    if not matched:
        raise Unverified("X-Telegram-Bot-Api-Secret-Token does not match")


# -- what a delivery says about itself -----------------------------------------------------


def _delivery_id(value: object) -> str:
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text:
        raise NoDeliveryId("the delivery has no delivery id")
    if len(text) > DELIVERY_ID_MAX_CHARS:
        raise NoDeliveryId(f"the delivery id is longer than {DELIVERY_ID_MAX_CHARS} characters")
    return text


def _dig(document: Any, *path: str | int) -> Any:
    for step in path:
        if isinstance(step, int):
            if not isinstance(document, list) or len(document) <= step:
                return None
        elif not isinstance(document, dict):
            return None
        document = document[step] if isinstance(step, int) else document.get(step)
    return document


def whatsapp_facts(payload: Any) -> tuple[str, str | None]:
    """``(delivery id, chat id)`` of a Cloud API notification: the first message's id,
    and ``<phone_number_id>:<sender wa_id>``. A notification with statuses only (sent,
    delivered, read: what follows every reply) is ``NotADelivery``."""
    value = _dig(payload, "entry", 0, "changes", 0, "value")
    message = _dig(value, "messages", 0)
    if message is None:
        if _dig(value, "statuses", 0) is not None:
            raise NotADelivery("a WhatsApp status update")
        raise NoDeliveryId("a WhatsApp notification with no messages[0].id")
    delivery_id = _delivery_id(_dig(message, "id"))
    phone = _dig(value, "metadata", "phone_number_id")
    sender = _dig(message, "from")
    chat = f"{phone}:{sender}" if phone is not None and sender is not None else None
    return delivery_id, chat[:200] if chat else None


TELEGRAM_MESSAGES = ("message", "edited_message", "channel_post", "edited_channel_post")


def telegram_facts(payload: Any) -> tuple[str, str | None]:
    """``(str(update_id), str(chat id))`` of a Bot API update (the chat of its message,
    edited message, channel post or callback query's message)."""
    delivery_id = _delivery_id(_dig(payload, "update_id"))
    chat = None
    for kind in TELEGRAM_MESSAGES:
        chat = _dig(payload, kind, "chat", "id")
        if chat is not None:
            break
    if chat is None:
        chat = _dig(payload, "callback_query", "message", "chat", "id")
    return delivery_id, (str(chat)[:200] if isinstance(chat, (int, str)) else None)
