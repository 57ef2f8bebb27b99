"""The audit-index projection of run events: folds the RUNS stream into ``audit_events``.

Hosted by the gateway, which serves the search over it. Each row is written from its
own event plus two facts of earlier events of the same run: the run's workflow (from
its ``run.requested``) and, on a failure, the agent that had the failed node's task
(from its last ``run.agent_task.assigned``), looked up in the batch first, then in the
rows already written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import Table, and_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.audit.ordering import order_before, order_times
from chiffon.audit.storable import storable
from chiffon.audit.tables import ERROR_MESSAGE_MAX_CHARS, audit_events
from chiffon.events import actor_label
from chiffon.events.runs import (
    AgentTaskAssigned,
    AgentTaskFinished,
    NodeFailed,
    RunFailed,
    RunRequested,
)
from chiffon.eventstore import RecordedEvent
from chiffon.projections import Projection

FAILURE_TYPES = ("run.failed", "run.node.failed")
"""The rows ``chiffon audit failures`` counts: an agent task's failure also fails its
node, so counting both would count one failure twice."""


def _failure(event: RecordedEvent) -> tuple[str, str] | None:
    """The error type and message of a failure worth a post-mortem, else None."""
    p = event.payload
    if isinstance(p, RunFailed) or (isinstance(p, NodeFailed) and not p.will_retry):
        return p.error.type, p.error.message
    if isinstance(p, AgentTaskFinished) and not p.ok:
        error = p.error
        return (error.type, error.message) if error else ("agent_task_failed", p.summary or "")
    return None


class AuditIndexProjection(Projection):
    name: ClassVar[str] = "audit.index"
    context: ClassVar[str] = "RUNS"
    tables: ClassVar[Sequence[Table]] = (audit_events,)
    partitioned: ClassVar[bool] = False  # rows read earlier rows of their run
    poll: ClassVar[float] = 0.2

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        workflows: dict[str, str] = {}
        agents: dict[tuple[str, str], str] = {}
        for event in events:
            p = event.payload
            if isinstance(p, RunRequested):
                workflows[event.envelope.aggregate_id] = p.workflow
        await self._load_earlier(conn, events, workflows, agents)
        times = order_times(await order_before(conn, audit_events, events), events)
        rows: list[dict[str, Any]] = []
        for event, order_at in zip(events, times, strict=True):
            envelope = event.envelope
            p = envelope.payload
            run_id = envelope.aggregate_id
            node_id: str | None = getattr(p, "node_id", None)
            if isinstance(p, RunFailed):
                node_id = p.error.node_id
            agent_id: str | None = None
            if isinstance(p, AgentTaskAssigned):
                agent_id = agents[(run_id, p.node_id)] = p.agent_id
            elif isinstance(p, AgentTaskFinished):
                agent_id = p.agent_id or agents.get((run_id, p.node_id))
            elif node_id is not None:
                agent_id = agents.get((run_id, node_id))
            failure = _failure(event)
            rows.append(
                {
                    "sequence": event.sequence,
                    "event_id": str(envelope.event_id),
                    "type": envelope.type,
                    "run_id": run_id,
                    "actor": storable(actor_label(envelope.actor)),
                    "occurred_at": envelope.occurred_at,
                    "order_at": order_at,
                    "node_id": node_id,
                    "workflow": workflows.get(run_id),
                    "agent_id": storable(agent_id),
                    "error_type": storable(failure[0]) if failure else None,
                    "error_message": storable(failure[1], ERROR_MESSAGE_MAX_CHARS)
                    if failure
                    else None,
                }
            )
        if rows:
            await conn.execute(insert(audit_events).on_conflict_do_nothing(), rows)

    @staticmethod
    async def _load_earlier(
        conn: AsyncConnection,
        events: Sequence[RecordedEvent],
        workflows: dict[str, str],
        agents: dict[tuple[str, str], str],
    ) -> None:
        """Fill in the workflows and agents of runs whose earlier events were indexed in
        an earlier batch (the batch's own events are folded in after, in order)."""
        runs = {e.envelope.aggregate_id for e in events} - set(workflows)
        if runs:
            found = await conn.execute(
                select(audit_events.c.run_id, audit_events.c.workflow).where(
                    and_(audit_events.c.type == "run.requested", audit_events.c.run_id.in_(runs))
                )
            )
            workflows.update((row.run_id, row.workflow) for row in found if row.workflow)
        needs_agent = {
            e.envelope.aggregate_id
            for e in events
            if isinstance(e.payload, NodeFailed | RunFailed | AgentTaskFinished)
        }
        if needs_agent:
            assigned = await conn.execute(
                select(audit_events.c.run_id, audit_events.c.node_id, audit_events.c.agent_id)
                .where(
                    and_(
                        audit_events.c.type == "run.agent_task.assigned",
                        audit_events.c.run_id.in_(needs_agent),
                    )
                )
                .order_by(audit_events.c.sequence)
            )
            for row in assigned:
                agents[(row.run_id, row.node_id)] = row.agent_id
