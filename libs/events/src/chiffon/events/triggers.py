"""Events of the trigger context: webhook triggers, their deliveries, and cron schedules.

Three aggregates, all on the TRIGGERS stream:

- ``trigger``, one per webhook trigger (id: its name): what a delivery starts (workflow,
  optional pinned version, the mapping from the delivery to the run's inputs), how it is
  verified (scheme and secrets, stored encrypted: never in clear in an event), and
  whether it is enabled.
- ``webhook``, one per delivery (id: ``delivery_aggregate_id(trigger, delivery id)``):
  the delivery as received (raw body and the headers that matter), appended with
  expected version 0, so the same delivery id arriving twice, on any replica, is
  stored once; then what became of it (its run requested, a reply sent or failed).
- ``schedule``, one per cron schedule (id: its name): its definition and state, and one
  ``schedule.fired`` or ``schedule.tick_skipped`` per tick. A tick's run has the
  idempotency key ``tick:<schedule>:<scheduled time>``, so a tick requested twice (two
  replicas, a restart) starts one run.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from chiffon.events.envelope import EventPayload
from chiffon.events.limits import (
    REASON_MAX_CHARS,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_VERSION_MAX,
)

TRIGGER_NAME_MAX_CHARS = 63
TRIGGER_NAME_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{TRIGGER_NAME_MAX_CHARS - 1}}}$"
"""A trigger's or a schedule's name: a slug (it is the aggregate id and a URL part)."""

DELIVERY_ID_MAX_CHARS = 200
"""A delivery id as the sender gives it (``webhook-id``, a WhatsApp message id, a
Telegram ``update_id``)."""

INPUT_MAPPING_MAX_CHARS = 500
"""One input's source: a JSON pointer into the body (``/issue/title``), or
``header:<name>`` for a header's value, or ``delivery:id`` / ``delivery:received_at``."""

MAX_SECRETS = 5
"""Secrets a trigger accepts at once (the newest first): rotation keeps the old one
active until every sender has the new one."""

CRON_MAX_CHARS = 120

Scheme = Literal["standard-webhooks", "whatsapp", "telegram"]
SCHEMES: tuple[Scheme, ...] = get_args(Scheme)

OverlapPolicy = Literal["skip", "buffer_one", "allow_all", "cancel_other"]
"""Temporal's set: what a tick does while the schedule's previous run is still going:
``skip`` it, keep at most one to start when that run ends (``buffer_one``), start it
anyway (``allow_all``), or cancel the running one and start (``cancel_other``)."""
OVERLAP_POLICIES: tuple[OverlapPolicy, ...] = get_args(OverlapPolicy)


def delivery_aggregate_id(trigger: str, delivery_id: str) -> str:
    """The delivery's aggregate id: the trigger's name and a digest of the sender's
    delivery id (which may hold any character), within the aggregate id pattern."""
    digest = hashlib.sha256(f"{trigger}\x00{delivery_id}".encode()).hexdigest()[:40]
    return f"{trigger}-{digest}"


# -- the trigger aggregate -----------------------------------------------------------------


class ReplySpec(BaseModel):
    """WhatsApp and Telegram: send the run's chosen output back to the chat it came from
    when the run ends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: str = Field(
        min_length=1,
        max_length=VARIABLE_NAME_MAX_CHARS,
        description="the run output (state key) whose value is sent back",
    )


class TriggerCreated(EventPayload):
    event_type = "trigger.created"
    aggregate = "trigger"

    name: str = Field(pattern=TRIGGER_NAME_PATTERN)
    workflow: str = Field(min_length=1, max_length=WORKFLOW_NAME_MAX_CHARS)
    version: int | None = Field(default=None, ge=1, le=WORKFLOW_VERSION_MAX)
    scheme: Scheme
    secrets_encrypted: list[str] = Field(
        default_factory=list,
        max_length=MAX_SECRETS,
        description="Fernet tokens of the secrets, newest first; none: the trigger is off",
    )
    verify_token_encrypted: str | None = Field(
        default=None, max_length=2000, description="WhatsApp's GET verification token"
    )
    inputs: dict[str, str] = Field(default_factory=dict, max_length=100)
    reply: ReplySpec | None = None
    reply_token_encrypted: str | None = Field(
        default=None,
        max_length=2000,
        description="the API token replies are sent with (Telegram bot token, WhatsApp access token)",
    )


class TriggerSecretsSet(EventPayload):
    """The trigger's secrets replaced (rotation: the new one first, the old still
    listed until it is dropped)."""

    event_type = "trigger.secrets_set"
    aggregate = "trigger"

    secrets_encrypted: list[str] = Field(max_length=MAX_SECRETS)


class TriggerDisabled(EventPayload):
    event_type = "trigger.disabled"
    aggregate = "trigger"

    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class TriggerEnabled(EventPayload):
    event_type = "trigger.enabled"
    aggregate = "trigger"


# -- the webhook (delivery) aggregate ------------------------------------------------------


class DeliveryReceived(EventPayload):
    """A verified delivery, as it came (for audit, replay and backfill). The body is
    inline when small, else stored by reference (``body_ref``: an object in the
    deliveries object store, named by its SHA-256)."""

    event_type = "webhook.received"
    aggregate = "webhook"

    trigger: str = Field(pattern=TRIGGER_NAME_PATTERN)
    delivery_id: str = Field(min_length=1, max_length=DELIVERY_ID_MAX_CHARS)
    scheme: Scheme
    received_at: AwareDatetime
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    content_type: str | None = Field(default=None, max_length=200)
    body: str | None = Field(default=None, description="inline body (UTF-8 or base64)")
    body_encoding: Literal["utf-8", "base64"] = "utf-8"
    body_ref: str | None = Field(default=None, max_length=200)
    body_bytes: int = Field(ge=0)
    body_sha256: str = Field(min_length=64, max_length=64)
    workflow: str = Field(max_length=WORKFLOW_NAME_MAX_CHARS)
    version: int | None = Field(default=None, ge=1, le=WORKFLOW_VERSION_MAX)
    inputs: dict[str, Any] = Field(default_factory=dict)
    run_id: str = Field(max_length=128, description="the run it starts (known in advance)")
    chat_id: str | None = Field(
        default=None, max_length=200, description="where a reply goes (WhatsApp, Telegram)"
    )


class DeliveryRunRequested(EventPayload):
    """The run was requested and accepted (or already existed) for this delivery."""

    event_type = "webhook.run_requested"
    aggregate = "webhook"

    run_id: str = Field(max_length=128)
    replay_of: str | None = Field(default=None, max_length=128)


class DeliveryRunRefused(EventPayload):
    """The run could not be started (the workflow does not exist, the inputs do not fit
    it): recorded, never retried."""

    event_type = "webhook.run_refused"
    aggregate = "webhook"

    code: str = Field(max_length=64)
    message: str = Field(max_length=REASON_MAX_CHARS)


class ReplySent(EventPayload):
    event_type = "webhook.reply_sent"
    aggregate = "webhook"

    run_id: str = Field(max_length=128)
    chunks: int = Field(ge=1)


class ReplyFailed(EventPayload):
    """A reply attempt failed; ``final``: no more attempts (the failure stays on record)."""

    event_type = "webhook.reply_failed"
    aggregate = "webhook"

    run_id: str = Field(max_length=128)
    attempt: int = Field(ge=1)
    error: str = Field(max_length=REASON_MAX_CHARS)
    final: bool = False


# -- the schedule aggregate ----------------------------------------------------------------


class ScheduleCreated(EventPayload):
    event_type = "schedule.created"
    aggregate = "schedule"

    name: str = Field(pattern=TRIGGER_NAME_PATTERN)
    workflow: str = Field(min_length=1, max_length=WORKFLOW_NAME_MAX_CHARS)
    version: int | None = Field(default=None, ge=1, le=WORKFLOW_VERSION_MAX)
    cron: str = Field(min_length=1, max_length=CRON_MAX_CHARS)
    timezone: str = Field(default="UTC", max_length=64)
    inputs: dict[str, Any] = Field(default_factory=dict)
    jitter_seconds: int = Field(default=0, ge=0, le=3600)
    overlap: OverlapPolicy = "skip"
    catchup_window_seconds: int = Field(default=60, ge=0, le=7 * 86400)


class SchedulePaused(EventPayload):
    event_type = "schedule.paused"
    aggregate = "schedule"

    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


class ScheduleResumed(EventPayload):
    event_type = "schedule.resumed"
    aggregate = "schedule"


class ScheduleDeleted(EventPayload):
    event_type = "schedule.deleted"
    aggregate = "schedule"


class ScheduleFired(EventPayload):
    """A tick started its run (idempotency key ``tick:<schedule>:<scheduled_at>``)."""

    event_type = "schedule.fired"
    aggregate = "schedule"

    scheduled_at: AwareDatetime
    fired_at: AwareDatetime
    run_id: str = Field(max_length=128)
    catch_up: bool = False


class ScheduleTickSkipped(EventPayload):
    event_type = "schedule.tick_skipped"
    aggregate = "schedule"

    scheduled_at: AwareDatetime
    reason: Literal["overlap", "outside_catchup_window", "buffered", "refused"]
    detail: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


TRIGGER_EVENTS: tuple[type[EventPayload], ...] = (
    TriggerCreated,
    TriggerSecretsSet,
    TriggerDisabled,
    TriggerEnabled,
    DeliveryReceived,
    DeliveryRunRequested,
    DeliveryRunRefused,
    ReplySent,
    ReplyFailed,
    ScheduleCreated,
    SchedulePaused,
    ScheduleResumed,
    ScheduleDeleted,
    ScheduleFired,
    ScheduleTickSkipped,
)
