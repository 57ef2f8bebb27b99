"""The webhook trigger aggregate, pure: its fold, the validation of what a command asks
for (every bad field named with its path, as ``SetBudget`` is refused), the decisions
(create, set secrets, disable, enable), the answer every trigger command returns, and
the mapping from a delivery to a run's inputs. No I/O: encryption is handed in.

Input sources (one per run input):

- a JSON pointer into the body (RFC 6901): ``/issue/title``, ``/items/0/id``; a pointer
  that leads nowhere leaves the input out (the run's own validation then refuses a
  missing required input, and the delivery records the refusal);
- ``header:<name>``: a request header's value (only the headers a delivery stores);
- ``delivery:id`` (the sender's delivery id) and ``delivery:received_at`` (ISO 8601).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from chiffon.events import Envelope, EventPayload
from chiffon.events.limits import (
    NODE_ID_PATTERN,
    REASON_MAX_CHARS,
    WORKFLOW_NAME_PATTERN,
    WORKFLOW_VERSION_MAX,
)
from chiffon.events.triggers import (
    INPUT_MAPPING_MAX_CHARS,
    MAX_SECRETS,
    SCHEMES,
    TRIGGER_NAME_PATTERN,
    ReplySpec,
    Scheme,
    TriggerCreated,
    TriggerDisabled,
    TriggerEnabled,
    TriggerSecretsSet,
)

SECRET_MIN_CHARS = 16
SECRET_MAX_CHARS = 1000
STANDARD_SECRET_PREFIX = "whsec_"  # noqa: S105 — the spec's prefix, not a secret
MAX_INPUTS = 100
REPLY_SCHEMES: tuple[Scheme, ...] = ("whatsapp", "telegram")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")  # an HTTP token
SECRET_HEADERS = frozenset({"authorization", "cookie", "x-telegram-bot-api-secret-token"})
"""Headers never stored with a delivery nor mapped to an input: they carry secrets."""
TELEGRAM_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what setWebhook accepts
_TRIGGER_NAME = re.compile(TRIGGER_NAME_PATTERN)
_WORKFLOW_NAME = re.compile(WORKFLOW_NAME_PATTERN)
_INPUT_NAME = re.compile(NODE_ID_PATTERN)

Encrypt = Callable[[str], str]
Detail = dict[str, str]


class TriggerInvalid(Exception):
    """What a command asks for is not a trigger: ``details`` names each bad field."""

    def __init__(self, details: list[Detail]) -> None:
        super().__init__("; ".join(f"{d['path']}: {d['message']}" for d in details))
        self.details = details


class TriggerNotFound(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"no trigger {name!r}")
        self.name = name


class TriggerExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a trigger named {name!r} exists already")
        self.name = name


# -- input sources -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """Where one run input comes from in a delivery."""

    kind: Literal["pointer", "header", "delivery_id", "received_at"]
    tokens: tuple[str, ...] = ()  # a pointer's reference tokens, unescaped
    header: str = ""  # lower case


def parse_source(text: str) -> Source:
    """The source ``text`` names; ``ValueError`` saying why it names none."""
    if len(text) > INPUT_MAPPING_MAX_CHARS:
        raise ValueError(f"longer than {INPUT_MAPPING_MAX_CHARS} characters")
    if text == "delivery:id":
        return Source("delivery_id")
    if text == "delivery:received_at":
        return Source("received_at")
    if text.startswith("header:"):
        name = text.removeprefix("header:")
        if not HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not a header name")
        if name.lower() in SECRET_HEADERS:
            raise ValueError(f"{name} carries a secret: it is never an input")
        return Source("header", header=name.lower())
    if text.startswith("/"):
        tokens = []
        for raw in text[1:].split("/"):
            if re.search(r"~(?![01])", raw):
                raise ValueError(f"{text!r} is not a JSON pointer: '~' must be '~0' or '~1'")
            tokens.append(raw.replace("~1", "/").replace("~0", "~"))
        return Source("pointer", tokens=tuple(tokens))
    raise ValueError(
        f"{text!r} is not a source: a JSON pointer (/a/b), header:<name>, delivery:id "
        "or delivery:received_at"
    )


_ABSENT = object()


def _follow(document: Any, tokens: Sequence[str]) -> Any:
    for token in tokens:
        if isinstance(document, dict):
            document = document.get(token, _ABSENT)
        elif isinstance(document, list):
            if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
                return _ABSENT
            index = int(token)
            document = document[index] if index < len(document) else _ABSENT
        else:
            return _ABSENT
        if document is _ABSENT:
            return _ABSENT
    return document


def resolve_inputs(
    sources: Mapping[str, Source],
    body: Any,
    headers: Mapping[str, str],
    delivery_id: str,
    received_at: datetime,
) -> dict[str, Any]:
    """The run's inputs from a delivery (``headers`` keyed in lower case); a source that
    finds nothing leaves its input out."""
    inputs: dict[str, Any] = {}
    for name, source in sources.items():
        if source.kind == "pointer":
            value = _follow(body, source.tokens)
            if value is not _ABSENT:
                inputs[name] = value
        elif source.kind == "header":
            found = headers.get(source.header)
            if found is not None:
                inputs[name] = found
        elif source.kind == "delivery_id":
            inputs[name] = delivery_id
        else:
            inputs[name] = received_at.isoformat()
    return inputs


# -- secrets -------------------------------------------------------------------------------


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_`` + base64 (as the spec and
    the ``standardwebhooks`` package have it) is decoded; any other secret is used as
    its UTF-8 bytes. ``ValueError`` for a ``whsec_`` secret that is not base64."""
    if secret.startswith(STANDARD_SECRET_PREFIX):
        encoded = secret.removeprefix(STANDARD_SECRET_PREFIX)
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode()


def secret_problem(scheme: Scheme, secret: str) -> str | None:
    """Why ``secret`` cannot verify deliveries of ``scheme``, or None."""
    if len(secret) > SECRET_MAX_CHARS:
        return f"longer than {SECRET_MAX_CHARS} characters"
    if scheme == "standard-webhooks" and secret.startswith(STANDARD_SECRET_PREFIX):
        try:
            key = standard_webhooks_key(secret)
        except ValueError as error:
            return str(error)
        if len(key) < SECRET_MIN_CHARS:
            return f"a whsec_ secret must decode to at least {SECRET_MIN_CHARS} bytes"
        return None
    if len(secret) < SECRET_MIN_CHARS:
        return f"shorter than {SECRET_MIN_CHARS} characters"
    if scheme == "telegram" and not TELEGRAM_SECRET.match(secret):
        return "a Telegram secret token holds only A-Z, a-z, 0-9, '_' and '-' (at most 256)"
    return None


def validate_secrets(scheme: Scheme, secrets: Sequence[str], path: str = "secrets") -> list[Detail]:
    details: list[Detail] = []
    if not secrets:
        details.append({"path": path, "message": "at least one secret is needed"})
    elif len(secrets) > MAX_SECRETS:
        details.append({"path": path, "message": f"at most {MAX_SECRETS} secrets"})
    for index, secret in enumerate(secrets):
        problem = secret_problem(scheme, secret)
        if problem:
            details.append({"path": f"{path}.{index}", "message": problem})
        elif secret in secrets[:index]:
            details.append({"path": f"{path}.{index}", "message": "listed twice"})
    return details


# -- the aggregate -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerState:
    name: str
    version: int = 0  # the stream sequence of its last event (0: none)
    created: bool = False
    workflow: str = ""
    workflow_version: int | None = None
    scheme: Scheme = "standard-webhooks"
    secrets_encrypted: tuple[str, ...] = ()
    verify_token_encrypted: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)
    reply: ReplySpec | None = None
    reply_token_encrypted: str | None = None
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def open(self) -> bool:
        """Does it take deliveries? (Created, enabled, and with a secret: a trigger
        without one is off, not open.)"""
        return self.created and self.enabled and bool(self.secrets_encrypted)


def evolve(state: TriggerState, envelope: Envelope[Any], sequence: int) -> TriggerState:
    payload = envelope.payload
    at = envelope.occurred_at
    if isinstance(payload, TriggerCreated):
        state = replace(
            state,
            created=True,
            workflow=payload.workflow,
            workflow_version=payload.version,
            scheme=payload.scheme,
            secrets_encrypted=tuple(payload.secrets_encrypted),
            verify_token_encrypted=payload.verify_token_encrypted,
            inputs=dict(payload.inputs),
            reply=payload.reply,
            reply_token_encrypted=payload.reply_token_encrypted,
            enabled=True,
            created_at=at,
        )
    elif isinstance(payload, TriggerSecretsSet):
        state = replace(state, secrets_encrypted=tuple(payload.secrets_encrypted))
    elif isinstance(payload, TriggerDisabled):
        state = replace(state, enabled=False, disabled_reason=payload.reason)
    elif isinstance(payload, TriggerEnabled):
        state = replace(state, enabled=True, disabled_reason=None)
    return replace(state, version=sequence, updated_at=at)


@dataclass(frozen=True, slots=True)
class NewTrigger:
    """A ``CreateTrigger`` checked: everything a ``trigger.created`` needs, in clear."""

    name: str
    workflow: str
    version: int | None
    scheme: Scheme
    secrets: tuple[str, ...]
    verify_token: str | None
    inputs: dict[str, str]
    reply_output: str | None
    reply_token: str | None


def _check_name(name: str, path: str = "trigger") -> list[Detail]:
    if _TRIGGER_NAME.match(name):
        return []
    return [
        {
            "path": path,
            "message": f"{name!r} is not a trigger name (lower-case letters, digits, '-' "
            "and '_', starting with a letter or digit, at most 63)",
        }
    ]


def validate_name(name: str) -> str:
    details = _check_name(name)
    if details:
        raise TriggerInvalid(details)
    return name


def validate_create(
    *,
    trigger: str,
    workflow: str,
    version: int | None,
    scheme: str,
    secrets: Sequence[str],
    verify_token: str | None,
    inputs: Mapping[str, str],
    reply: Mapping[str, Any] | None,
) -> NewTrigger:
    """The trigger a ``CreateTrigger`` asks for, or ``TriggerInvalid`` listing every problem."""
    details = _check_name(trigger)
    if not _WORKFLOW_NAME.match(workflow):
        details.append({"path": "workflow", "message": f"{workflow!r} is not a workflow name"})
    if version is not None and not 1 <= version <= WORKFLOW_VERSION_MAX:
        details.append({"path": "version", "message": f"{version} is not a workflow version"})
    if scheme not in SCHEMES:
        details.append(
            {"path": "scheme", "message": f"unknown scheme {scheme!r}: one of {', '.join(SCHEMES)}"}
        )
    known: Scheme = "standard-webhooks"
    for each in SCHEMES:
        if scheme == each:
            known = each
            details += validate_secrets(known, secrets)
    if scheme == "whatsapp":
        if not verify_token:
            details.append(
                {"path": "verify_token", "message": "a WhatsApp trigger needs a verify token"}
            )
    elif verify_token is not None:
        details.append({"path": "verify_token", "message": "only a WhatsApp trigger has one"})
    if len(inputs) > MAX_INPUTS:
        details.append({"path": "inputs", "message": f"at most {MAX_INPUTS} inputs"})
    for name, source in inputs.items():
        if not _INPUT_NAME.match(name):
            details.append({"path": f"inputs.{name}", "message": f"{name!r} is not an input name"})
            continue
        try:
            parse_source(source)
        except ValueError as error:
            details.append({"path": f"inputs.{name}", "message": str(error)})
    reply_output = reply_token = None
    if reply is not None:
        if scheme not in REPLY_SCHEMES:
            details.append(
                {"path": "reply", "message": "only WhatsApp and Telegram triggers reply"}
            )
        extra = sorted(set(reply) - {"output", "token"})
        if extra:
            details.append({"path": "reply", "message": f"unknown fields: {', '.join(extra)}"})
        output, token = reply.get("output"), reply.get("token")
        if not isinstance(output, str) or not _INPUT_NAME.match(output):
            details.append(
                {"path": "reply.output", "message": "the run output to send back (a state key)"}
            )
        else:
            reply_output = output
        if not isinstance(token, str) or not token or len(token) > SECRET_MAX_CHARS:
            details.append(
                {"path": "reply.token", "message": "the API token replies are sent with"}
            )
        else:
            reply_token = token
    if details:
        raise TriggerInvalid(details)
    return NewTrigger(
        name=trigger,
        workflow=workflow,
        version=version,
        scheme=known,
        secrets=tuple(secrets),
        verify_token=verify_token,
        inputs=dict(inputs),
        reply_output=reply_output,
        reply_token=reply_token,
    )


def decide_create(state: TriggerState, new: NewTrigger, encrypt: Encrypt) -> list[EventPayload]:
    if state.created:
        raise TriggerExists(state.name)
    return [
        TriggerCreated(
            name=new.name,
            workflow=new.workflow,
            version=new.version,
            scheme=new.scheme,
            secrets_encrypted=[encrypt(secret) for secret in new.secrets],
            verify_token_encrypted=encrypt(new.verify_token) if new.verify_token else None,
            inputs=new.inputs,
            reply=ReplySpec(output=new.reply_output) if new.reply_output else None,
            reply_token_encrypted=encrypt(new.reply_token) if new.reply_token else None,
        )
    ]


def decide_set_secrets(
    state: TriggerState, secrets: Sequence[str], encrypt: Encrypt
) -> list[EventPayload]:
    if not state.created:
        raise TriggerNotFound(state.name)
    details = validate_secrets(state.scheme, secrets)
    if details:
        raise TriggerInvalid(details)
    return [TriggerSecretsSet(secrets_encrypted=[encrypt(secret) for secret in secrets])]


def decide_disable(state: TriggerState, reason: str | None) -> list[EventPayload]:
    if not state.created:
        raise TriggerNotFound(state.name)
    if reason is not None and len(reason) > REASON_MAX_CHARS:
        raise TriggerInvalid(
            [{"path": "reason", "message": f"longer than {REASON_MAX_CHARS} characters"}]
        )
    return [] if not state.enabled else [TriggerDisabled(reason=reason)]


def decide_enable(state: TriggerState) -> list[EventPayload]:
    if not state.created:
        raise TriggerNotFound(state.name)
    return [] if state.enabled else [TriggerEnabled()]


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def answer(
    state: TriggerState, deliveries: int = 0, last_delivery_at: datetime | None = None
) -> dict[str, Any]:
    """The trigger as every trigger command answers it (never a secret)."""
    return {
        "name": state.name,
        "workflow": state.workflow,
        "version": state.workflow_version,
        "scheme": state.scheme,
        "enabled": state.enabled,
        "disabled_reason": state.disabled_reason,
        "secrets": len(state.secrets_encrypted),
        "inputs": dict(state.inputs),
        "reply": {"output": state.reply.output} if state.reply else None,
        "hook_path": f"/hooks/{state.name}",
        "created_at": _iso(state.created_at),
        "updated_at": _iso(state.updated_at),
        "deliveries": deliveries,
        "last_delivery_at": _iso(last_delivery_at),
    }
