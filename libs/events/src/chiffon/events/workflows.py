"""Events of the workflow catalog: immutable, versioned workflow specs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from chiffon.events.envelope import EventPayload
from chiffon.events.limits import WORKFLOW_MAX_BYTES, WORKFLOW_NAME_MAX_CHARS, WORKFLOW_VERSION_MAX


class WorkflowVersionRegistered(EventPayload):
    """A workflow version, frozen. The aggregate id is the workflow's name."""

    event_type = "workflow.version_registered"
    aggregate = "workflow"

    name: str = Field(min_length=1, max_length=WORKFLOW_NAME_MAX_CHARS)
    version: int = Field(ge=1, le=WORKFLOW_VERSION_MAX)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the canonical spec")
    spec: dict[str, Any] = Field(description="The validated spec, canonical form")
    source: str = Field(max_length=WORKFLOW_MAX_BYTES, description="The text as the user wrote it")
    source_format: Literal["yaml", "json"] = "yaml"


WORKFLOW_EVENTS: tuple[type[EventPayload], ...] = (WorkflowVersionRegistered,)
