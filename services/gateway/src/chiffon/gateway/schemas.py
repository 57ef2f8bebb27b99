"""Request and response bodies of the API, named for their direction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from chiffon.readmodels.views import ApprovalPublic, RunSummary, WorkflowSummary

RunStatusName = Literal[
    "pending", "running", "waiting_approval", "paused", "succeeded", "failed", "cancelled"
]
Role = Literal["viewer", "operator", "admin"]


def has_nul(value: Any, depth: int = 0) -> bool:
    """NUL characters: JSON allows them, PostgreSQL text and JSONB do not."""
    if isinstance(value, str):
        return "\x00" in value
    if depth > 64:
        return False
    if isinstance(value, dict):
        return any(has_nul(k, depth + 1) or has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_nul(v, depth + 1) for v in value)
    return False


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _no_nul(self) -> Any:
        for name in type(self).model_fields:
            if has_nul(getattr(self, name)):
                raise ValueError(f"{name}: NUL characters (\\u0000) are not allowed")
        return self


class RunCreate(_In):
    workflow: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="A registered workflow's name",
    )
    version: int | None = Field(
        default=None, ge=1, le=2_147_483_647, description="Default: the latest"
    )
    inputs: dict[str, Any] = Field(default_factory=dict)


class RunAccepted(BaseModel):
    run_id: str
    status: str
    workflow: str
    version: int
    created: bool = Field(description="False when an Idempotency-Key replayed an earlier request")


class RunsPublic(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = None


class CancelCreate(_In):
    reason: str | None = Field(default=None, max_length=1000)


class CancelAccepted(BaseModel):
    run_id: str
    status: str
    cancel_requested: bool


class ApprovalCreate(_In):
    approve: bool
    comment: str | None = Field(default=None, max_length=4000)


class ApprovalRecorded(BaseModel):
    run_id: str
    node_id: str
    approved: bool
    status: str


class ApprovalsPublic(BaseModel):
    approvals: list[ApprovalPublic]


class WorkflowRegistered(BaseModel):
    name: str
    version: int
    digest: str
    created: bool = Field(description="False when this exact version was already registered")


class WorkflowsPublic(BaseModel):
    workflows: list[WorkflowSummary]


class KeyCreate(_In):
    name: str = Field(min_length=1, max_length=100)
    role: Role
    expires_at: AwareDatetime | None = Field(default=None, description="Optional expiry (UTC)")


class KeyPublic(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str = Field(description="The key's first characters, to recognise it")
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    active: bool


class KeyCreated(KeyPublic):
    key: str = Field(description="The secret. Shown once: it is stored only as a hash.")


class KeysPublic(BaseModel):
    keys: list[KeyPublic]


class KeyRevoke(_In):
    reason: str | None = Field(default=None, max_length=500)


class Me(BaseModel):
    id: str
    name: str
    role: Role
