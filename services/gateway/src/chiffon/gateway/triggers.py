"""What the dashboard shows of triggers and schedules: a run's trigger reference read
back into its trigger (or schedule) and delivery (or tick). Pure: the unit tests call it.

A webhook run's reference is ``{"kind": "webhook", "id": <delivery aggregate id>}``, the
trigger's name and 40 hex digits of the delivery id's digest
(``chiffon.events.triggers.delivery_aggregate_id``); a schedule's is ``{"kind":
"schedule", "id": "<schedule>@<scheduled time>"}``; an API run's names the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_DELIVERY = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,62})-(?P<digest>[0-9a-f]{40})$")
_TICK = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]{0,62})@(?P<at>[0-9T:\-.+Z]{1,40})$")


@dataclass(frozen=True, slots=True)
class TriggerParts:
    kind: str
    name: str | None = None  # the trigger's or schedule's name, when there is one
    detail: str | None = None  # the delivery, the tick's time, the key id
    detail_label: str = ""

    @property
    def anchor(self) -> str:
        return f"{'schedule' if self.kind == 'schedule' else 'trigger'}-{self.name or ''}"


def trigger_parts(trigger: Any) -> TriggerParts:
    """A run's ``trigger`` (``{"kind", "id"}``) as the run page shows it."""
    if not isinstance(trigger, dict):
        return TriggerParts(kind="unknown")
    kind = str(trigger.get("kind") or "unknown")
    ref = trigger.get("id")
    ref = str(ref) if ref is not None else None
    if kind == "webhook" and ref is not None:
        found = _DELIVERY.fullmatch(ref)
        if found:
            return TriggerParts(kind, found["name"], ref, "delivery")
        return TriggerParts(kind, None, ref, "delivery")
    if kind == "schedule" and ref is not None:
        found = _TICK.fullmatch(ref)
        if found:
            return TriggerParts(kind, found["name"], found["at"], "scheduled at")
        return TriggerParts(kind, None, ref, "tick")
    return TriggerParts(kind, None, ref, "key" if kind == "api" else "")
