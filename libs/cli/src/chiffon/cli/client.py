"""The one interface the CLI talks to Chiffon through, and the errors it raises.

``GatewayClient`` (REST and SSE to the gateway, ``http_client``) implements it; the
commands and the tests depend on this interface, not on HTTP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from chiffon.readmodels.views import (
        ApprovalPublic,
        RunPublic,
        RunSummary,
        WorkflowPublic,
        WorkflowSummary,
    )


class ClientError(Exception):
    """A request Chiffon refused or could not serve. ``code`` says which kind."""

    code = "error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidRequest(ClientError):
    code = "invalid"


class NotFound(ClientError):
    code = "not_found"


class Conflict(ClientError):
    code = "conflict"


class Unavailable(ClientError):
    code = "unavailable"


@dataclass(frozen=True)
class RunEvent:
    """One event of a run as a client sees it. ``seq`` resumes a follow after it."""

    seq: int
    type: str
    occurred_at: datetime
    actor: str
    payload: dict[str, Any] = field(default_factory=dict)


class ChiffonClient(ABC):
    """Every operation the CLI needs. Use as an async context manager."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def close(self) -> None: ...

    # -- workflows --
    @abstractmethod
    async def register_workflow(
        self, source: str, *, source_format: str = "yaml"
    ) -> dict[str, Any]:
        """``{name, version, digest, created}``."""

    @abstractmethod
    async def list_workflows(self) -> list[WorkflowSummary]: ...

    @abstractmethod
    async def get_workflow(
        self, name: str, version: int | None = None
    ) -> WorkflowPublic | None: ...

    # -- runs --
    @abstractmethod
    async def start_run(
        self,
        workflow: str,
        *,
        inputs: dict[str, Any],
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """``{run_id, status, workflow, version, created}``."""

    @abstractmethod
    async def get_run(self, run_id: str) -> RunPublic | None: ...

    @abstractmethod
    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[RunSummary], str | None]: ...

    @abstractmethod
    async def cancel_run(self, run_id: str, *, reason: str | None = None) -> dict[str, Any]: ...

    @abstractmethod
    async def approve(
        self, run_id: str, node_id: str, *, approve: bool = True, comment: str | None = None
    ) -> dict[str, Any]: ...

    @abstractmethod
    async def list_pending_approvals(self) -> list[ApprovalPublic]: ...

    @abstractmethod
    def follow_run_events(
        self, run_id: str, after_seq: int = 0, *, follow: bool = True, output: bool = False
    ) -> AsyncIterator[RunEvent]:
        """The run's events after ``after_seq``: history, then live until the run ends or
        the caller stops (``follow=False``: the history only). ``output``: also agent
        tasks' output lines as they are printed (``type == "output"``, not stored: their
        ``seq`` is the last stored event's, and a resumed follow does not replay them)."""
