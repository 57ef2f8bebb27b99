"""Queries over the workflows and runs read models (the gateway and the CLI call these).

Each takes an ``AsyncConnection`` or an ``AsyncEngine``. Lists are paginated by an
opaque cursor on the run's stream sequence (stable: new runs never shift a page).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chiffon.readmodels.tables import run_approvals, run_nodes, runs, workflows
from chiffon.readmodels.views import (
    ApprovalPublic,
    NodePublic,
    RunPublic,
    RunSummary,
    WorkflowPublic,
    WorkflowSummary,
)

Db = AsyncConnection | AsyncEngine
MAX_LIMIT = 500


class InvalidCursor(ValueError):
    """A pagination cursor that this API did not hand out."""


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"run:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "run":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None


@asynccontextmanager
async def _conn(db: Db) -> AsyncIterator[AsyncConnection]:
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            yield conn
    else:
        yield db


def _summary_fields(row: Row[Any]) -> dict[str, Any]:
    m = row._mapping
    return {
        "run_id": m["run_id"],
        "workflow": m["workflow"],
        "version": m["workflow_version"],
        "status": m["status"],
        "executor": m["executor"],
        "created_at": m["created_at"],
        "started_at": m["started_at"],
        "ended_at": m["ended_at"],
        "duration_ms": m["duration_ms"],
        "prompt_tokens": m["prompt_tokens"],
        "completion_tokens": m["completion_tokens"],
        "error": m["error"],
    }


async def get_run(db: Db, run_id: str) -> RunPublic | None:
    """A run with its nodes (in the order they first ran) and approvals, or None."""
    async with _conn(db) as conn:
        row = (await conn.execute(select(runs).where(runs.c.run_id == run_id))).first()
        if row is None:
            return None
        nodes = await conn.execute(
            select(run_nodes).where(run_nodes.c.run_id == run_id).order_by(run_nodes.c.ordinal)
        )
        approvals = await conn.execute(
            select(run_approvals)
            .where(run_approvals.c.run_id == run_id)
            .order_by(run_approvals.c.requested_at, run_approvals.c.node_id)
        )
        m = row._mapping
        return RunPublic(
            **_summary_fields(row),
            digest=m["digest"],
            inputs=m["inputs"] or {},
            outputs=m["outputs"],
            pid=m["pid"],
            claims=m["claims"],
            requested_by=m["requested_by"],
            trigger=m["trigger"],
            idempotency_key=m["idempotency_key"],
            cancel_requested=m["cancel_requested"],
            paused=m["paused"],
            forked_from=m["forked_from"],
            llm_calls=m["llm_calls"],
            position=m["position"],
            nodes=[NodePublic.model_validate(dict(n._mapping)) for n in nodes],
            approvals=[ApprovalPublic.model_validate(dict(a._mapping)) for a in approvals],
        )


async def list_runs(
    db: Db,
    *,
    status: str | None = None,
    workflow: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[RunSummary], str | None]:
    """Runs, newest first; the next page's cursor, or None on the last page."""
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(runs).order_by(runs.c.seq.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(runs.c.status == status)
    if workflow is not None:
        query = query.where(runs.c.workflow == workflow)
    if cursor is not None:
        query = query.where(runs.c.seq < decode_cursor(cursor))
    async with _conn(db) as conn:
        rows = list(await conn.execute(query))
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > limit else None
    return [RunSummary(**_summary_fields(r)) for r in page], next_cursor


async def get_workflow(db: Db, name: str, version: int | None = None) -> WorkflowPublic | None:
    """One version of a workflow (the latest when ``version`` is None), with its source."""
    async with _conn(db) as conn:
        versions = [
            v
            for (v,) in await conn.execute(
                select(workflows.c.version)
                .where(workflows.c.name == name)
                .order_by(workflows.c.version)
            )
        ]
        if not versions:
            return None
        wanted = versions[-1] if version is None else version
        if wanted not in versions:
            return None
        row = (
            await conn.execute(
                select(workflows).where(workflows.c.name == name, workflows.c.version == wanted)
            )
        ).one()
    data = dict(row._mapping)
    data.pop("position", None)
    return WorkflowPublic(**data, versions=versions)


async def list_workflows(db: Db) -> list[WorkflowSummary]:
    """Every workflow by name, with its latest version."""
    counts = (
        select(
            workflows.c.name,
            func.max(workflows.c.version).label("latest"),
            func.count().label("versions"),
        )
        .group_by(workflows.c.name)
        .subquery()
    )
    query = (
        select(workflows, counts.c.versions)
        .join(
            counts, (workflows.c.name == counts.c.name) & (workflows.c.version == counts.c.latest)
        )
        .order_by(workflows.c.name)
    )
    async with _conn(db) as conn:
        rows = list(await conn.execute(query))
    return [
        WorkflowSummary(
            name=r.name,
            version=r.version,
            versions=r.versions,
            digest=r.digest,
            description=r.description,
            node_count=r.node_count,
            registered_at=r.registered_at,
        )
        for r in rows
    ]


async def list_pending_approvals(db: Db, *, limit: int = 200) -> list[ApprovalPublic]:
    """Approval requests still waiting for a decision, oldest first."""
    query = (
        select(run_approvals)
        .where(run_approvals.c.open.is_(True))
        .order_by(run_approvals.c.requested_at)
        .limit(max(1, min(limit, 1000)))
    )
    async with _conn(db) as conn:
        rows = list(await conn.execute(query))
    return [ApprovalPublic.model_validate(dict(r._mapping)) for r in rows]
