"""A run's audit record: its timeline, folded from the run's events alone.

Pure: the same envelopes (and the same prices) always give the same record, so the
record an auditor reads today, the one the git export committed months ago and the one
rebuilt from the stream agree. Every event of the run is one timeline entry, in stream
order; each entry has the same first keys (``type``, ``at``, ``actor``, ``node_id``,
``model``, ``tokens``, ``cost_usd``), null where they do not apply, then what is
particular to its type (the key a run was started with, the workflow's digest, an
approval's comment, the agent that ran a task, an error).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from chiffon.events import Envelope, actor_label
from chiffon.events.costs import CallPriced, CallsPriced
from chiffon.events.runs import (
    AgentTaskAssigned,
    AgentTaskFinished,
    AgentTaskRequested,
    ApprovalDecided,
    ApprovalRequested,
    CancelRequested,
    ErrorInfo,
    LlmCalled,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    RunCancelled,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunPaused,
    RunRequested,
    RunResumed,
    RunSuspended,
)

AuditEntry = dict[str, Any]
AuditRecord = dict[str, Any]
"""``{"run_id": ..., "timeline": [AuditEntry, ...]}``: what ``GET /v1/runs/{id}/audit``
answers and the git export commits."""

COMMON_KEYS = ("type", "at", "actor", "node_id", "model", "tokens", "cost_usd")


def usd(amount: Decimal | None) -> str | None:
    """An amount as the API writes it (``0.0000117``, ``12.5``, ``0``); None: unpriced."""
    if amount is None:
        return None
    if amount == 0:
        return "0"
    return format(amount.normalize(), "f")


def prices_from_cost_events(events: Iterable[Envelope[Any]], run_id: str) -> dict[str, str | None]:
    """Each of ``run_id``'s priced calls, by the id of its ``run.llm.called`` event: its
    cost in dollars, or None when its price is unknown. A call priced twice (a pricer
    restarted) has one price: the last read wins, and it is the same."""
    prices: dict[str, str | None] = {}
    for envelope in events:
        payload = envelope.payload
        if isinstance(payload, CallsPriced):
            for call in payload.calls():
                if call.run_id == run_id:
                    prices[call.llm_event_id] = usd(call.cost_usd)
        elif isinstance(payload, CallPriced) and payload.run_id == run_id:
            prices[payload.llm_event_id] = usd(payload.cost_usd)
    return prices


def _error(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "node_id": error.node_id}


def _details(envelope: Envelope[Any]) -> dict[str, Any]:
    """What an event of this type adds to the common keys."""
    p = envelope.payload
    if isinstance(p, RunRequested):
        key_id = envelope.actor.id if envelope.actor.kind == "api_key" else None
        return {
            "workflow": p.workflow,
            "version": p.version,
            "digest": p.digest,
            "key_id": key_id,
            "trigger": p.trigger.model_dump() if p.trigger else None,
            "idempotency_key": p.idempotency_key,
            "inputs": p.inputs,
        }
    if isinstance(p, RunClaimed):
        return {"executor": p.executor, "resumed": p.resumed}
    if isinstance(p, NodeStarted):
        return {"node_type": p.node_type, "attempt": p.attempt, "iteration": p.iteration}
    if isinstance(p, NodeCompleted):
        return {
            "attempt": p.attempt,
            "iteration": p.iteration,
            "duration_ms": p.duration_ms,
            "outputs": p.outputs,
            "outputs_ref": p.outputs_ref,
        }
    if isinstance(p, NodeFailed):
        return {
            "attempt": p.attempt,
            "iteration": p.iteration,
            "duration_ms": p.duration_ms,
            "will_retry": p.will_retry,
            "error": _error(p.error),
        }
    if isinstance(p, LlmCalled):
        return {
            "attempt": p.attempt,
            "provider": p.provider,
            "prompt_tokens": p.prompt_tokens,
            "completion_tokens": p.completion_tokens,
            "latency_ms": p.latency_ms,
            "ok": p.ok,
            "error": p.error,
            "fallback_index": p.fallback_index,
            "budget_note": p.budget_note,
        }
    if isinstance(p, ApprovalRequested):
        return {"message": p.message, "iteration": p.iteration}
    if isinstance(p, ApprovalDecided):
        return {"approved": p.approved, "comment": p.comment, "iteration": p.iteration}
    if isinstance(p, AgentTaskRequested):
        return {
            "task_id": p.task_id,
            "attempt": p.attempt,
            "capabilities": p.capabilities,
        }
    if isinstance(p, AgentTaskAssigned):
        return {
            "task_id": p.task_id,
            "agent_id": p.agent_id,
            "agent_name": p.agent_name,
            "tool": p.tool,
            "arguments": p.arguments,
        }
    if isinstance(p, AgentTaskFinished):
        return {
            "task_id": p.task_id,
            "agent_id": p.agent_id,
            "ok": p.ok,
            "exit_code": p.exit_code,
            "summary": p.summary,
            "error": _error(p.error),
            "duration_ms": p.duration_ms,
        }
    if isinstance(p, RunPaused):
        return {"reason": p.reason, "budget": p.budget}
    if isinstance(p, RunResumed | CancelRequested):
        return {"reason": p.reason}
    if isinstance(p, RunSuspended):
        return {"waiting_for": p.waiting_for}
    if isinstance(p, RunCompleted):
        return {"duration_ms": p.duration_ms, "outputs": p.outputs}
    if isinstance(p, RunFailed):
        return {"duration_ms": p.duration_ms, "error": _error(p.error)}
    if isinstance(p, RunCancelled):
        return {"duration_ms": p.duration_ms, "reason": p.reason}
    return {}


def audit_entry(envelope: Envelope[Any], prices: Mapping[str, str | None]) -> AuditEntry:
    """One event as a timeline entry."""
    payload = envelope.payload
    model = tokens = cost = None
    if isinstance(payload, LlmCalled):
        model = payload.model
        tokens = payload.prompt_tokens + payload.completion_tokens
        cost = prices.get(str(envelope.event_id))
    entry: AuditEntry = {
        "type": envelope.type,
        "at": envelope.occurred_at.isoformat(),
        "actor": actor_label(envelope.actor),
        "node_id": getattr(payload, "node_id", None),
        "model": model,
        "tokens": tokens,
        "cost_usd": cost,
        "event_id": str(envelope.event_id),
    }
    entry.update(_details(envelope))
    return entry


def audit_record(
    run_id: str,
    events: Sequence[Envelope[Any]],
    prices: Mapping[str, str | None] | None = None,
) -> AuditRecord:
    """The run's record: every event of ``events`` that belongs to ``run_id``, in the
    order given (stream order), as a timeline. ``prices`` maps a ``run.llm.called``
    event's id to its cost (``prices_from_cost_events`` or the spend read model); a call
    missing from it is not priced yet and shows ``cost_usd: null``."""
    known = prices or {}
    timeline = [
        audit_entry(envelope, known)
        for envelope in events
        if envelope.aggregate == "run" and envelope.aggregate_id == run_id
    ]
    return {"run_id": run_id, "timeline": timeline}


def summary(record: AuditRecord) -> dict[str, Any]:
    """The record's headline: who started the run, with which key and workflow version,
    how it ended, what its model calls used and cost."""
    timeline: list[AuditEntry] = record["timeline"]
    started = next((e for e in timeline if e["type"] == "run.requested"), None)
    ended = next(
        (
            e
            for e in reversed(timeline)
            if e["type"] in ("run.completed", "run.failed", "run.cancelled")
        ),
        None,
    )
    calls = [e for e in timeline if e["type"] == "run.llm.called"]
    priced = [Decimal(e["cost_usd"]) for e in calls if e["cost_usd"] is not None]
    return {
        "run_id": record["run_id"],
        "started_by": started["actor"] if started else None,
        "key_id": started.get("key_id") if started else None,
        "trigger": started.get("trigger") if started else None,
        "workflow": started.get("workflow") if started else None,
        "version": started.get("version") if started else None,
        "digest": started.get("digest") if started else None,
        "started_at": started["at"] if started else None,
        "ended": ended["type"] if ended else None,
        "ended_at": ended["at"] if ended else None,
        "model_calls": len(calls),
        "tokens": sum(e["tokens"] or 0 for e in calls),
        "cost_usd": usd(sum(priced, Decimal(0))) if priced else None,
        "unpriced_calls": len(calls) - len(priced),
    }
