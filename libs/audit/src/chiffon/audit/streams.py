"""The audit index of the streams other than RUNS: who created or revoked an API key,
set or removed a budget, registered or removed an agent or issued its credential,
created or changed a trigger or a schedule, registered a workflow version.

One projection per stream (a projection folds one stream), each into its own table.
A row holds ids, names, types and the actor only: key hashes, agent credentials,
trigger secrets and signing keys are never read into it.

Left out, by ``event_types`` (NATS does not even deliver them): the high-volume events
that are no one's decision. ``cost.calls.priced``, ``cost.call.priced`` and
``cost.price.unknown`` (one per model call), the budget ledger (``budget.reserved``,
``budget.settled``, ``budget.reservation_expired``: one per call), agent liveness
(``agent.capacity_changed``, ``agent.went_offline``, ``agent.came_back``; heartbeats are
not events), webhook deliveries (``webhook.*``, one per delivery: the run a delivery
starts is indexed with its trigger) and schedule ticks (``schedule.fired``,
``schedule.tick_skipped``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.audit.ordering import order_before, order_times
from chiffon.audit.storable import storable
from chiffon.audit.tables import NAME_MAX_CHARS, STREAM_TABLES
from chiffon.events import EventPayload, actor_label
from chiffon.events.agents import AgentCredentialIssued, AgentRegistered
from chiffon.events.costs import BudgetSet
from chiffon.events.keys import ApiKeyCreated
from chiffon.events.triggers import ScheduleCreated, TriggerCreated
from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.eventstore import RecordedEvent
from chiffon.projections import Projection

AUDITED_TYPES: dict[str, frozenset[str] | None] = {
    "KEYS": None,  # every event: created and revoked
    "COSTS": frozenset({"budget.set", "budget.removed", "budget.soft_limit_reached"}),
    "AGENTS": frozenset(
        {
            "agent.registered",
            "agent.deregistered",
            "agent.credential.issued",
            "agent.credential.revoked",
        }
    ),
    "TRIGGERS": frozenset(
        {
            "trigger.created",
            "trigger.secrets_set",
            "trigger.disabled",
            "trigger.enabled",
            "schedule.created",
            "schedule.paused",
            "schedule.resumed",
            "schedule.deleted",
        }
    ),
    "WORKFLOWS": None,  # every event: a version registered
}
"""The event types indexed per stream (None: all of them)."""


def _facts(payload: EventPayload, aggregate: str, aggregate_id: str) -> dict[str, Any]:
    """The name, workflow, version and agent an event names, by its type (what else it
    carries is not read: that is how no secret reaches the index)."""
    name: str | None = None
    workflow: str | None = None
    version: int | None = None
    agent_id: str | None = None
    if isinstance(payload, ApiKeyCreated | AgentCredentialIssued):
        name = payload.name
    elif isinstance(payload, AgentRegistered):
        name, agent_id = payload.name, payload.agent_id or aggregate_id
    elif isinstance(payload, TriggerCreated | ScheduleCreated):
        name, workflow, version = payload.name, payload.workflow, payload.version
    elif isinstance(payload, WorkflowVersionRegistered):
        name = workflow = payload.name
        version = payload.version
    elif isinstance(payload, BudgetSet):
        name = payload.scope_id
    if aggregate == "agent" and agent_id is None:
        agent_id = aggregate_id
    return {
        "name": storable(name, NAME_MAX_CHARS),
        "workflow": storable(workflow),
        "version": version,
        "agent_id": storable(agent_id),
    }


def stream_row(event: RecordedEvent, order_at: datetime) -> dict[str, Any]:
    """The index row of one event of a stream other than RUNS."""
    envelope = event.envelope
    return {
        "sequence": event.sequence,
        "event_id": str(envelope.event_id),
        "type": envelope.type,
        "aggregate": envelope.aggregate,
        "aggregate_id": envelope.aggregate_id,
        "actor": storable(actor_label(envelope.actor)),
        "occurred_at": envelope.occurred_at,
        "order_at": order_at,
        **_facts(envelope.payload, envelope.aggregate, envelope.aggregate_id),
    }


class StreamIndexProjection(Projection):
    """Folds one stream's audited events into its table of the audit index."""

    tables: ClassVar[Sequence[Table]]
    partitioned: ClassVar[bool] = False  # a row's place follows the row before it
    # A waiting pull, not a look every 0.2 s: these events are rare (a key, a budget, a
    # trigger), and five projections looking five times a second each took an idle
    # gateway from 8 to 11-18 ms of CPU a second, and NATS 3-4 ms more.
    poll: ClassVar[float] = 0.0

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        audited = self.event_types
        if audited is not None:  # the subscription filters too; this holds on any path
            events = [event for event in events if event.type in audited]
        if not events:
            return
        (table,) = self.tables
        times = order_times(await order_before(conn, table, events), events)
        rows = [stream_row(event, at) for event, at in zip(events, times, strict=True)]
        # A batch applied again (a crash before the checkpoint moved) writes nothing twice.
        await conn.execute(insert(table).on_conflict_do_nothing(), rows)


class KeysIndexProjection(StreamIndexProjection):
    name: ClassVar[str] = "audit.keys"
    context: ClassVar[str] = "KEYS"
    event_types: ClassVar[frozenset[str] | None] = AUDITED_TYPES["KEYS"]
    tables: ClassVar[Sequence[Table]] = (STREAM_TABLES["KEYS"],)


class BudgetsIndexProjection(StreamIndexProjection):
    name: ClassVar[str] = "audit.budgets"
    context: ClassVar[str] = "COSTS"
    event_types: ClassVar[frozenset[str] | None] = AUDITED_TYPES["COSTS"]
    tables: ClassVar[Sequence[Table]] = (STREAM_TABLES["COSTS"],)


class AgentsIndexProjection(StreamIndexProjection):
    name: ClassVar[str] = "audit.agents"
    context: ClassVar[str] = "AGENTS"
    event_types: ClassVar[frozenset[str] | None] = AUDITED_TYPES["AGENTS"]
    tables: ClassVar[Sequence[Table]] = (STREAM_TABLES["AGENTS"],)


class TriggersIndexProjection(StreamIndexProjection):
    name: ClassVar[str] = "audit.triggers"
    context: ClassVar[str] = "TRIGGERS"
    event_types: ClassVar[frozenset[str] | None] = AUDITED_TYPES["TRIGGERS"]
    tables: ClassVar[Sequence[Table]] = (STREAM_TABLES["TRIGGERS"],)


class WorkflowsIndexProjection(StreamIndexProjection):
    name: ClassVar[str] = "audit.workflows"
    context: ClassVar[str] = "WORKFLOWS"
    event_types: ClassVar[frozenset[str] | None] = AUDITED_TYPES["WORKFLOWS"]
    tables: ClassVar[Sequence[Table]] = (STREAM_TABLES["WORKFLOWS"],)


STREAM_PROJECTIONS: tuple[type[StreamIndexProjection], ...] = (
    KeysIndexProjection,
    BudgetsIndexProjection,
    AgentsIndexProjection,
    TriggersIndexProjection,
    WorkflowsIndexProjection,
)
