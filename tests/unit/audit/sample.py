"""A run's events as the executor, an approver and the cost service record them: the
material of the audit tests (appended to a store, or folded directly)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from chiffon.events import Actor, Envelope, new_event
from chiffon.events.costs import CallsPriced, ModelPrices
from chiffon.events.envelope import EventPayload
from chiffon.events.runs import (
    AgentTaskAssigned,
    AgentTaskFinished,
    AgentTaskRequested,
    ApprovalDecided,
    ApprovalRequested,
    ErrorInfo,
    LlmCalled,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    RunClaimed,
    RunCompleted,
    RunFailed,
    RunRequested,
    TriggerRef,
)

DIGEST = "ab" * 32
STARTER = Actor(kind="api_key", id="key-7f3a", name="ci-bot")
APPROVER = Actor(kind="user", id="alice")
EXECUTOR = Actor.service("executor", 1)
T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _at(payload: EventPayload, run_id: str, actor: Actor, seconds: float) -> Envelope[Any]:
    return new_event(
        payload,
        aggregate_id=run_id,
        actor=actor,
        correlation_id=run_id,
        occurred_at=T0 + timedelta(seconds=seconds),
    )


def run_events(
    run_id: str,
    *,
    workflow: str = "deploy-kuma",
    comment: str = "ship it",
    fail_with: str | None = None,
    agent_id: str = "agent-homelab-1",
    start: float = 0.0,
) -> list[Envelope[Any]]:
    """A run of four nodes: ``plan`` (a model call), ``sign_off`` (an approval), ``apply``
    (an agent task) and ``note`` (a model call); with ``fail_with``, ``apply``'s task fails
    with that error type, for good, and so does the run."""
    s = start
    events = [
        _at(
            RunRequested(
                workflow=workflow,
                version=3,
                digest=DIGEST,
                inputs={"goal": "uptime kuma"},
                trigger=TriggerRef(kind="api"),
            ),
            run_id,
            STARTER,
            s,
        ),
        _at(RunClaimed(executor="executor-1", pid=4242), run_id, EXECUTOR, s + 0.1),
        _at(NodeStarted(node_id="plan", node_type="llm", attempt=1), run_id, EXECUTOR, s + 0.2),
        _at(
            LlmCalled(
                node_id="plan",
                attempt=1,
                provider="openai",
                model="openai/gpt-4o-mini",
                prompt_tokens=120,
                completion_tokens=80,
                latency_ms=900,
            ),
            run_id,
            EXECUTOR,
            s + 1.1,
        ),
        _at(
            NodeCompleted(
                node_id="plan", attempt=1, outputs={"plan": "docker run"}, duration_ms=950
            ),
            run_id,
            EXECUTOR,
            s + 1.2,
        ),
        _at(ApprovalRequested(node_id="sign_off", message="Ship?"), run_id, EXECUTOR, s + 1.3),
        _at(
            ApprovalDecided(node_id="sign_off", approved=True, comment=comment),
            run_id,
            APPROVER,
            s + 60,
        ),
        _at(NodeStarted(node_id="apply", node_type="agent", attempt=1), run_id, EXECUTOR, s + 61),
        _at(
            AgentTaskRequested(
                task_id=f"{run_id}-apply-1", node_id="apply", attempt=1, capabilities=["shell"]
            ),
            run_id,
            EXECUTOR,
            s + 61.1,
        ),
        _at(
            AgentTaskAssigned(
                task_id=f"{run_id}-apply-1",
                node_id="apply",
                agent_id=agent_id,
                agent_name="homelab",
                tool="shell",
            ),
            run_id,
            EXECUTOR,
            s + 61.2,
        ),
    ]
    if fail_with is not None:
        error = ErrorInfo(type=fail_with, message=f"{fail_with} on {agent_id}", node_id="apply")
        events += [
            _at(
                AgentTaskFinished(
                    task_id=f"{run_id}-apply-1",
                    node_id="apply",
                    ok=False,
                    error=error,
                    agent_id=agent_id,
                ),
                run_id,
                EXECUTOR,
                s + 62,
            ),
            _at(
                NodeFailed(
                    node_id="apply", attempt=1, error=error, will_retry=False, duration_ms=1000
                ),
                run_id,
                EXECUTOR,
                s + 62.1,
            ),
            _at(RunFailed(error=error, duration_ms=62100), run_id, EXECUTOR, s + 62.2),
        ]
        return events
    events += [
        _at(
            AgentTaskFinished(
                task_id=f"{run_id}-apply-1",
                node_id="apply",
                ok=True,
                exit_code=0,
                agent_id=agent_id,
            ),
            run_id,
            EXECUTOR,
            s + 62,
        ),
        _at(
            NodeCompleted(node_id="apply", attempt=1, duration_ms=1000), run_id, EXECUTOR, s + 62.1
        ),
        _at(NodeStarted(node_id="note", node_type="llm", attempt=1), run_id, EXECUTOR, s + 62.2),
        _at(
            LlmCalled(
                node_id="note",
                attempt=1,
                provider="ollama",
                model="ollama_chat/llama3.1",
                prompt_tokens=40,
                completion_tokens=10,
                latency_ms=300,
            ),
            run_id,
            EXECUTOR,
            s + 62.5,
        ),
        _at(NodeCompleted(node_id="note", attempt=1, duration_ms=310), run_id, EXECUTOR, s + 62.6),
        _at(RunCompleted(outputs={"note": "done"}, duration_ms=62600), run_id, EXECUTOR, s + 62.7),
    ]
    return events


def priced(run_id: str, events: list[Envelope[Any]], costs: list[Decimal | None]) -> Envelope[Any]:
    """``cost.calls.priced`` for the run's model calls, in order, at ``costs``."""
    calls = [e for e in events if isinstance(e.payload, LlmCalled)]
    n = len(calls)
    payload = CallsPriced(
        llm_event_id=[str(e.event_id) for e in calls],
        run_id=[run_id] * n,
        workflow=[None] * n,
        key_id=[None] * n,
        agent_id=[None] * n,
        node_id=[e.payload.node_id for e in calls],
        attempt=[1] * n,
        provider=[e.payload.provider for e in calls],
        model=[e.payload.model for e in calls],
        called_at=[e.occurred_at for e in calls],
        prompt_tokens=[e.payload.prompt_tokens for e in calls],
        completion_tokens=[e.payload.completion_tokens for e in calls],
        cached_read_tokens=[0] * n,
        cache_write_tokens=[0] * n,
        reasoning_tokens=[0] * n,
        cost_usd=costs,
        source=["price_map" if c is not None else "unknown" for c in costs],
        models=[ModelPrices(provider=e.payload.provider, model=e.payload.model) for e in calls],
        price_map_version="litellm-test",
    )
    return new_event(payload, aggregate_id="pricer-1", actor=Actor.service("cost", 1))
