"""What every tool of the agent shares: its refusal, its context and its result.

A tool is a door into this machine, so each one is fenced by the operating system or
the database (rlimits, namespaces, resolved paths, a read-only transaction), never by a
pattern over the task's text. A tool that refuses a task raises `ToolRefused` with a
machine-readable `error_type`; the executor does not retry `FINAL_ERRORS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: Error types no other attempt can cure: the executor fails the node at once.
FORBIDDEN = "forbidden"  # the fence said no: a path out of the roots, a private address, a write
LIMIT_EXCEEDED = "limit_exceeded"  # memory, CPU, file size, processes, rows or bytes over a cap
TIMEOUT = "timeout"  # the task ran past its wall-time limit and was killed
INVALID_ARGUMENTS = "invalid_arguments"  # the task is malformed (a missing or unknown field)
FINAL_ERRORS = frozenset({FORBIDDEN, LIMIT_EXCEEDED, TIMEOUT, INVALID_ARGUMENTS})

STDOUT = 1
STDERR = 2


class ToolRefused(Exception):
    """The task cannot run as asked; `error_type` is machine-readable, the message is not."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass
class ToolContext:
    """One task's view of the agent: where to stream lines, when to stop, its limits."""

    task_id: str
    #: The task's wall-time limit in seconds (the request's, capped by the agent's maximum).
    timeout: float
    #: Done when the task is to stop (a cancel, the agent stopping).
    cancelled: asyncio.Future[None]
    #: Stream one output line live: (STDOUT or STDERR, text without its newline).
    on_line: Callable[[int, str], None]
    #: A directory for this agent's scratch space; a tool makes its own folder beneath.
    scratch_root: Path


@dataclass
class ToolResult:
    """A tool's answer: `output` is JSON-able and becomes the node's outputs."""

    ok: bool
    output: Mapping[str, Any] = field(default_factory=dict)
    error_type: str = ""
    error_message: str = ""
    exit_code: int = 0
    duration_ms: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: float = 0.0

    @classmethod
    def failed(cls, error_type: str, message: str, **output: Any) -> ToolResult:
        return cls(
            ok=False, output=output, error_type=error_type, error_message=message, exit_code=-1
        )


class Tool(Protocol):
    """One tool of the agent (python, files, http, sql, ansible, catalog)."""

    name: str

    async def run(self, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        """Run one task; raise ToolRefused for a task the fence refuses."""
        ...

    async def close(self) -> None:
        """Release what the tool holds (pools, models); the agent is stopping."""
        ...
