"""Projections that fold workflow and run events into the read model tables.

A batch is folded in memory (rows read once per batch, written once with one upsert
per table), so a rebuild replays thousands of events a second. The folds are pure
functions of (row, event): a replay gives the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from sqlalchemy import Table, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.events import actor_label
from chiffon.events import runs as ev
from chiffon.events.limits import MODEL_NAME_MAX_CHARS
from chiffon.events.run_status import INITIAL_STATUS, next_status
from chiffon.events.storable import make_storable
from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.eventstore import RecordedEvent
from chiffon.projections import Projection
from chiffon.readmodels.display import truncate
from chiffon.readmodels.tables import run_approvals, run_nodes, runs, workflows

Row = dict[str, Any]


# -- runs --------------------------------------------------------------------------


def fold_run(row: Row | None, event: RecordedEvent, open_approvals: int = 0) -> Row | None:
    """The run's row after ``event``. ``open_approvals``: undecided requests after it."""
    payload = event.payload
    env = event.envelope
    at = env.occurred_at
    if isinstance(payload, ev.RunRequested):
        return {
            "run_id": env.aggregate_id,
            "seq": event.sequence,
            "workflow": payload.workflow,
            "workflow_version": payload.version,
            "digest": payload.digest,
            "status": next_status(INITIAL_STATUS, payload),
            "inputs": payload.inputs,
            "outputs": None,
            "error": None,
            "executor": None,
            "pid": None,
            "claims": 0,
            "requested_by": actor_label(env.actor),
            "trigger": payload.trigger.model_dump(mode="json") if payload.trigger else None,
            "idempotency_key": payload.idempotency_key,
            "cancel_requested": False,
            "paused": None,
            "forked_from": (
                {"run_id": payload.fork.run_id, "at": payload.fork.at} if payload.fork else None
            ),
            "created_at": at,
            "started_at": None,
            "ended_at": None,
            "updated_at": at,
            "duration_ms": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "llm_calls": 0,
            "position": event.sequence,
        }
    if row is None:
        return None
    row = dict(row)
    # The status moves as the executor's does: one transition, shared (run_status).
    row["status"] = next_status(row["status"], payload, open_approvals)
    if isinstance(payload, ev.RunClaimed):
        row.update(executor=payload.executor, pid=payload.pid, claims=row["claims"] + 1)
        row["started_at"] = row["started_at"] or at
    elif isinstance(payload, ev.LlmCalled):
        row["prompt_tokens"] += payload.prompt_tokens
        row["completion_tokens"] += payload.completion_tokens
        row["llm_calls"] += 1
    elif isinstance(payload, ev.CancelRequested):
        row["cancel_requested"] = True
    elif isinstance(payload, ev.RunPaused):
        row["paused"] = {
            "reason": payload.reason,
            "node_id": payload.node_id,
            "requires": list(payload.requires),
            "labels": payload.labels,
            "gpu_vram_gb": payload.gpu_vram_gb,
            "cpu_cores": payload.cpu_cores,
        }
    elif isinstance(payload, ev.RunResumed):
        row["paused"] = None
    elif isinstance(payload, ev.RunCompleted):
        row.update(
            outputs=truncate(payload.outputs, max_json=65_536),
            ended_at=at,
            duration_ms=payload.duration_ms,
        )
    elif isinstance(payload, ev.RunFailed):
        row.update(
            error=payload.error.model_dump(mode="json"),
            ended_at=at,
            duration_ms=payload.duration_ms,
        )
    elif isinstance(payload, ev.RunCancelled):
        row.update(ended_at=at, duration_ms=payload.duration_ms)
        if payload.reason:
            row["error"] = {"type": "cancelled", "message": payload.reason, "node_id": None}
    row.update(updated_at=at, position=event.sequence)
    return row


def fold_node(row: Row | None, event: RecordedEvent) -> Row | None:
    """The row of the node named by ``event`` (a node event) after it."""
    payload = event.payload
    at = event.envelope.occurred_at
    if isinstance(payload, ev.NodeStarted):
        if row is None:
            row = {
                "run_id": event.envelope.aggregate_id,
                "node_id": payload.node_id,
                "ordinal": event.sequence,
                "node_type": payload.node_type,
                "attempts": 0,
                "iterations": 0,
                "outputs": None,
                "error": None,
                "model": None,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "duration_ms": None,
            }
        row = dict(row)
        row.update(
            status="running",
            attempts=row["attempts"] + 1,
            iterations=max(row["iterations"], payload.iteration),
            started_at=at,
            ended_at=None,
        )
    elif row is None:
        return None
    else:
        row = dict(row)
        if isinstance(payload, ev.NodeCompleted):
            outputs = (
                {"_stored": payload.outputs_ref}
                if payload.outputs_ref
                else truncate(payload.outputs)
            )
            row.update(
                status="succeeded",
                outputs=outputs,
                error=None,
                ended_at=at,
                duration_ms=payload.duration_ms,
            )
        elif isinstance(payload, ev.NodeFailed):
            row.update(
                status="retrying" if payload.will_retry else "failed",
                error=payload.error.model_dump(mode="json"),
                ended_at=at,
                duration_ms=payload.duration_ms,
            )
        elif isinstance(payload, ev.ApprovalRequested):
            row["status"] = "waiting_approval"
        elif isinstance(payload, ev.LlmCalled):
            # The provider names the model it answered with: clipped to the column, for
            # a name is shown, never looked up, and a long one must not stop the runs view.
            row["model"] = payload.model[:MODEL_NAME_MAX_CHARS]
            row["prompt_tokens"] += payload.prompt_tokens
            row["completion_tokens"] += payload.completion_tokens
    row["position"] = event.sequence
    return row


ApprovalKey = tuple[str, str, int]  # (run id, node id, iteration)


def fold_approvals(
    approvals: dict[ApprovalKey, Row], event: RecordedEvent, workflow: str
) -> set[ApprovalKey]:
    """Fold ``event`` into the run's approval rows (in place); the keys it changed.

    A request opens one, its decision closes it, and the run's ending closes any left.
    ``approvals`` holds at least every open row of the event's run."""
    run_id = event.envelope.aggregate_id
    payload = event.payload
    at = event.envelope.occurred_at
    if isinstance(payload, ev.ApprovalRequested):
        key = (run_id, payload.node_id, payload.iteration)
        approvals[key] = {
            "run_id": run_id,
            "node_id": payload.node_id,
            "iteration": payload.iteration,
            "workflow": workflow,
            "message": payload.message,
            "requested_at": at,
            "decided_at": None,
            "approved": None,
            "comment": None,
            "decided_by": None,
            "open": True,
        }
        return {key}
    if isinstance(payload, ev.ApprovalDecided):
        key = (run_id, payload.node_id, payload.iteration)
        if key not in approvals:
            return set()
        approvals[key] = {
            **approvals[key],
            "decided_at": at,
            "approved": payload.approved,
            "comment": payload.comment,
            "decided_by": actor_label(event.envelope.actor),
            "open": False,
        }
        return {key}
    if event.type in ev.RUN_ENDINGS:
        closed = {k for k, row in approvals.items() if k[0] == run_id and row["open"]}
        for key in closed:
            approvals[key] = {**approvals[key], "open": False}
        return closed
    return set()


def open_approvals(approvals: dict[ApprovalKey, Row], run_id: str) -> int:
    """How many of the run's approval requests are still undecided."""
    return sum(1 for key, row in approvals.items() if key[0] == run_id and row["open"])


_NODE_EVENTS = (ev.NodeStarted, ev.NodeCompleted, ev.NodeFailed, ev.ApprovalRequested, ev.LlmCalled)


class RunsProjection(Projection):
    """runs, run_nodes and run_approvals from the RUNS stream."""

    name: ClassVar[str] = "readmodels.runs"
    context: ClassVar[str] = "RUNS"
    tables: ClassVar[Sequence[Table]] = (runs, run_nodes, run_approvals)
    partitioned: ClassVar[bool] = True  # every row is one run's, from that run's events
    # Runs write events in a steady trickle; live views follow the events themselves.
    poll: ClassVar[float] = 0.1

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        run_ids = {e.envelope.aggregate_id for e in events}
        run_rows: dict[str, Row | None] = {
            r.run_id: dict(r._mapping)
            for r in await conn.execute(select(runs).where(runs.c.run_id.in_(run_ids)))
        }
        node_keys = {
            (e.envelope.aggregate_id, e.payload.node_id)
            for e in events
            if isinstance(e.payload, _NODE_EVENTS)
        }
        node_rows: dict[tuple[str, str], Row | None] = {}
        if node_keys:
            found = await conn.execute(
                select(run_nodes).where(
                    tuple_(run_nodes.c.run_id, run_nodes.c.node_id).in_(node_keys)
                )
            )
            node_rows = {(r.run_id, r.node_id): dict(r._mapping) for r in found}
        approval_runs = {
            e.envelope.aggregate_id
            for e in events
            if isinstance(e.payload, (ev.ApprovalRequested, ev.ApprovalDecided))
            or e.type in ev.RUN_ENDINGS
        }
        approvals: dict[ApprovalKey, Row] = {}
        if approval_runs:
            found = await conn.execute(
                select(run_approvals).where(
                    run_approvals.c.run_id.in_(approval_runs), run_approvals.c.open.is_(True)
                )
            )
            approvals = {(r.run_id, r.node_id, r.iteration): dict(r._mapping) for r in found}

        changed_runs: set[str] = set()
        changed_nodes: set[tuple[str, str]] = set()
        changed_approvals: set[ApprovalKey] = set()
        for event in events:
            run_id = event.envelope.aggregate_id
            payload = event.payload
            run = run_rows.get(run_id)
            changed_approvals |= fold_approvals(approvals, event, run["workflow"] if run else "")
            open_count = open_approvals(approvals, run_id)
            new_run = fold_run(run_rows.get(run_id), event, open_count)
            if new_run is not None:
                run_rows[run_id] = new_run
                changed_runs.add(run_id)
            if isinstance(payload, _NODE_EVENTS):
                key2 = (run_id, payload.node_id)
                new_node = fold_node(node_rows.get(key2), event)
                if new_node is not None:
                    node_rows[key2] = new_node
                    changed_nodes.add(key2)

        await _upsert(conn, runs, ["run_id"], (run_rows[k] for k in changed_runs))
        await _upsert(conn, run_nodes, ["run_id", "node_id"], (node_rows[k] for k in changed_nodes))
        await _upsert(
            conn,
            run_approvals,
            ["run_id", "node_id", "iteration"],
            (approvals[k] for k in changed_approvals),
        )


# -- workflows ---------------------------------------------------------------------


def workflow_row(event: RecordedEvent) -> Row | None:
    payload = event.payload
    if not isinstance(payload, WorkflowVersionRegistered):
        return None
    nodes = payload.spec.get("nodes") or []
    return {
        "name": payload.name,
        "version": payload.version,
        "digest": payload.digest,
        "description": payload.spec.get("description"),
        "node_count": len(nodes),
        "node_types": dict(Counter(str(n.get("type")) for n in nodes if isinstance(n, dict))),
        "inputs": payload.spec.get("inputs") or {},
        "spec": payload.spec,
        "source": payload.source,
        "source_format": payload.source_format,
        "registered_at": event.envelope.occurred_at,
        "registered_by": actor_label(event.envelope.actor),
        "position": event.sequence,
    }


class WorkflowsProjection(Projection):
    """workflow_versions from the WORKFLOWS stream (immutable rows: first write wins)."""

    name: ClassVar[str] = "readmodels.workflows"
    context: ClassVar[str] = "WORKFLOWS"
    tables: ClassVar[Sequence[Table]] = (workflows,)

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        rows = [storable_row(row) for row in (workflow_row(e) for e in events) if row is not None]
        if rows:
            await conn.execute(insert(workflows).on_conflict_do_nothing(), rows)


def storable_row(row: Row) -> Row:
    """``row`` as PostgreSQL takes it: NUL and lone surrogates in its text and JSONB
    replaced by U+FFFD. The executor records nothing of the kind (issue 16), but an event
    recorded before it made its outputs storable may hold one, and PostgreSQL's refusal
    (``unsupported Unicode escape sequence``) would stop the projection for every run.
    A row with nothing to replace is itself, after one scan (microseconds)."""
    fixed: Row = make_storable(row)[0]
    return fixed


async def _upsert(
    conn: AsyncConnection, table: Table, keys: list[str], rows: Iterable[Row | None]
) -> None:
    """One upsert statement, executed for many rows (compiled once, cached by SQLAlchemy)."""
    batch = [storable_row(row) for row in rows if row is not None]
    if not batch:
        return
    await conn.execute(_upsert_statement(table, tuple(keys)), batch)


_UPSERTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _upsert_statement(table: Table, keys: tuple[str, ...]) -> Any:
    found = _UPSERTS.get((table.name, keys))
    if found is None:
        statement = insert(table)
        columns = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
        found = _UPSERTS[(table.name, keys)] = statement.on_conflict_do_update(
            index_elements=list(keys), set_=columns
        )
    return found
