"""Commands of the trigger context (owner: the trigger service): webhook triggers,
replays of their deliveries, and cron schedules.

The trigger service validates the fields (refused ``invalid`` with each bad field's
path, as ``SetBudget`` is), so they are loosely typed here. Secrets travel in a command
only on their way to being encrypted; no answer ever holds one.

Answers:

- a trigger: ``{"name", "workflow", "version", "scheme", "enabled", "secrets": <how many
  are active>, "inputs", "reply", "hook_path": "/hooks/<name>", "created_at",
  "updated_at", "deliveries": <how many stored>, "last_delivery_at"}``;
- a schedule: ``{"name", "workflow", "version", "cron", "timezone", "inputs",
  "jitter_seconds", "overlap", "catchup_window_seconds", "paused", "next_fire_times":
  [iso, ...] (the next 5, none when paused), "last_fired_at", "last_run_id",
  "created_at", "updated_at"}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from chiffon.commands.model import Command

_NAME = 200  # loosely bounded here; the service checks the real pattern


class CreateTrigger(Command):
    """Answered with the trigger; ``conflict`` when the name is taken."""

    owner = "trigger"
    name = "create_trigger"

    trigger: str = Field(max_length=_NAME)
    workflow: str = Field(max_length=_NAME)
    version: int | None = None
    scheme: str = Field(max_length=40)
    secrets: list[str] = Field(default_factory=list, max_length=10)
    verify_token: str | None = Field(default=None, max_length=1000)
    inputs: dict[str, str] = Field(default_factory=dict)
    reply: dict[str, Any] | None = None


class SetTriggerSecrets(Command):
    """Rotation: the trigger's secrets replaced by these (newest first). Answered with
    the trigger."""

    owner = "trigger"
    name = "set_trigger_secrets"

    trigger: str = Field(max_length=_NAME)
    secrets: list[str] = Field(max_length=10)


class DisableTrigger(Command):
    """Answered with the trigger (``enabled: false``); deliveries then get 404."""

    owner = "trigger"
    name = "disable_trigger"

    trigger: str = Field(max_length=_NAME)
    reason: str | None = Field(default=None, max_length=1000)


class EnableTrigger(Command):
    owner = "trigger"
    name = "enable_trigger"

    trigger: str = Field(max_length=_NAME)


class ListTriggers(Command):
    """Answered with ``{"triggers": [trigger, ...]}``, by name."""

    owner = "trigger"
    name = "list_triggers"


class ShowTrigger(Command):
    """Answered with the trigger and ``"recent_deliveries": [{"delivery", "delivery_id",
    "received_at", "run_id", "status"}]`` (newest first, at most 20)."""

    owner = "trigger"
    name = "show_trigger"

    trigger: str = Field(max_length=_NAME)


class ReplayDeliveries(Command):
    """Start a new run for every stored delivery of the trigger received in
    ``[from_, to)`` (against ``workflow``/``version`` when given, else the trigger's).
    Answered with ``{"trigger", "replayed": n, "runs": [{"delivery", "run_id"}]}``.
    Replaying the same range against the same version again starts nothing new."""

    owner = "trigger"
    name = "replay_deliveries"

    # ``from`` is a keyword: the field is ``from_`` and travels under that name too
    # (the bus sends ``model_dump_json()``), so either spelling is accepted.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    trigger: str = Field(max_length=_NAME)
    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None
    workflow: str | None = Field(default=None, max_length=_NAME)
    version: int | None = None


class CreateSchedule(Command):
    """Answered with the schedule; ``conflict`` when the name is taken."""

    owner = "trigger"
    name = "create_schedule"

    schedule: str = Field(max_length=_NAME)
    workflow: str = Field(max_length=_NAME)
    version: int | None = None
    cron: str = Field(max_length=500)
    timezone: str = Field(default="UTC", max_length=100)
    inputs: dict[str, Any] = Field(default_factory=dict)
    jitter_seconds: int = 0
    overlap: str = Field(default="skip", max_length=40)
    catchup_window_seconds: int = 60


class PauseSchedule(Command):
    owner = "trigger"
    name = "pause_schedule"

    schedule: str = Field(max_length=_NAME)
    reason: str | None = Field(default=None, max_length=1000)


class ResumeSchedule(Command):
    owner = "trigger"
    name = "resume_schedule"

    schedule: str = Field(max_length=_NAME)


class DeleteSchedule(Command):
    """Answered with ``{"deleted": true, "name"}``."""

    owner = "trigger"
    name = "delete_schedule"

    schedule: str = Field(max_length=_NAME)


class ListSchedules(Command):
    """Answered with ``{"schedules": [schedule, ...]}``, by name."""

    owner = "trigger"
    name = "list_schedules"
