"""What the read models return: pydantic models named for their direction (``*Public``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class ErrorPublic(_View):
    type: str
    message: str
    node_id: str | None = None


class NodePublic(_View):
    node_id: str
    node_type: str
    status: str  # running, retrying, waiting_approval, succeeded, failed
    attempts: int
    iterations: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_ms: float | None = None
    outputs: Any = None  # truncated for display; complete in the run's events
    error: ErrorPublic | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ApprovalPublic(_View):
    run_id: str
    node_id: str
    iteration: int
    workflow: str
    message: str
    requested_at: datetime
    decided_at: datetime | None = None
    approved: bool | None = None
    comment: str | None = None
    decided_by: str | None = None


class RunSummary(_View):
    run_id: str
    workflow: str
    version: int
    status: str
    executor: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: ErrorPublic | None = None


class PausePublic(_View):
    """Why a paused run waits (``no_capacity``: no agent can take ``node_id``'s task)."""

    reason: str
    node_id: str | None = None
    requires: list[str] = []
    labels: dict[str, str] = {}
    gpu_vram_gb: float | None = None
    cpu_cores: float | None = None


class ForkedFromPublic(_View):
    """The run a fork was made from, and the node it executes from."""

    run_id: str
    at: str


class RunPublic(RunSummary):
    digest: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    pid: int | None = None
    claims: int = 0
    requested_by: str
    trigger: dict[str, Any] | None = None
    idempotency_key: str | None = None
    cancel_requested: bool = False
    paused: PausePublic | None = None
    forked_from: ForkedFromPublic | None = None
    llm_calls: int = 0
    position: int  # stream sequence of the last event folded: follow events after it
    nodes: list[NodePublic] = []
    approvals: list[ApprovalPublic] = []


class WorkflowSummary(_View):
    name: str
    version: int  # the latest
    versions: int
    digest: str
    description: str | None = None
    node_count: int
    registered_at: datetime


class WorkflowPublic(_View):
    name: str
    version: int
    digest: str
    description: str | None = None
    node_count: int
    node_types: dict[str, int]
    inputs: dict[str, Any]
    spec: dict[str, Any]
    source: str
    source_format: str
    registered_at: datetime
    registered_by: str
    versions: list[int]  # every registered version, ascending
