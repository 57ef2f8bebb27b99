"""The files tool: read, write and list under the allowed roots only.

Task: ``{action: read|write|list, path: "...", content: "..."}``. A relative path is taken
under the first root (CHIFFON_AGENT_FILES_ROOTS); an absolute one must lie under a root.
Every component is opened beneath the root without following symlinks (files_beneath.py),
so `..`, a path out of the roots and a symlink (even one swapped in mid-call) are refused as
``forbidden``. Reads and writes over CHIFFON_AGENT_FILES_MAX_BYTES are ``limit_exceeded``.

Content is text (UTF-8) in ``content``; bytes that are not UTF-8 travel as base64 in
``content_base64`` (a read answers with whichever holds the file; a write takes either).
A write is atomic: a temporary file in the same directory, fsync'd, renamed over the name
(a reader sees the old file or the new, never half of one; an existing file's mode is kept).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import secrets
import stat
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chiffon.agent.tools.base import (
    INVALID_ARGUMENTS,
    LIMIT_EXCEEDED,
    Tool,
    ToolContext,
    ToolRefused,
    ToolResult,
)
from chiffon.agent.tools.files_beneath import (
    Target,
    locate,
    open_directory,
    open_parent,
    refusal,
)

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings

ACTIONS = ("read", "write", "list")
ARGUMENTS = frozenset({"action", "path", "content", "content_base64"})
#: A listing stops here (and says it was cut): a directory of a million files is an answer
#: no node wants in its outputs.
MAX_ENTRIES = 10_000
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class FilesTool:
    name = "files"

    def __init__(self, roots: tuple[str, ...], max_bytes: int) -> None:
        self.roots = roots
        self.max_bytes = max_bytes

    async def close(self) -> None:
        return None

    async def run(self, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        unknown = set(arguments) - ARGUMENTS
        if unknown:
            raise ToolRefused(INVALID_ARGUMENTS, f"unknown files arguments: {sorted(unknown)}")
        action = arguments.get("action")
        if action not in ACTIONS:
            raise ToolRefused(INVALID_ARGUMENTS, f"action must be one of {', '.join(ACTIONS)}")
        path = arguments.get("path", "" if action == "list" else None)
        if not isinstance(path, str) or (action != "list" and not path.strip("/.")):
            raise ToolRefused(INVALID_ARGUMENTS, "path must name a file")
        target = locate(path, self.roots)
        started = time.perf_counter()
        # Blocking file I/O (up to max_bytes) runs off the event loop.
        if action == "read":
            output = await asyncio.to_thread(self.read, target)
        elif action == "write":
            content = self._content(arguments)
            output = await asyncio.to_thread(self.write, target, content)
        else:
            output = await asyncio.to_thread(self.list, target)
        return ToolResult(
            ok=True, output=output, duration_ms=(time.perf_counter() - started) * 1000.0
        )

    def _content(self, arguments: Mapping[str, Any]) -> bytes:
        text, encoded = arguments.get("content"), arguments.get("content_base64")
        if (text is None) == (encoded is None):
            raise ToolRefused(INVALID_ARGUMENTS, "a write takes content or content_base64")
        if text is not None:
            if not isinstance(text, str):
                raise ToolRefused(INVALID_ARGUMENTS, "content must be a string")
            data = text.encode("utf-8", "surrogatepass")
        else:
            if not isinstance(encoded, str):
                raise ToolRefused(INVALID_ARGUMENTS, "content_base64 must be a string")
            if len(encoded) > (self.max_bytes // 3 + 1) * 4:
                raise self._too_large("the content")
            try:
                data = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise ToolRefused(INVALID_ARGUMENTS, "content_base64 is not base64") from None
        if len(data) > self.max_bytes:
            raise self._too_large("the content")
        return data

    def _too_large(self, what: str) -> ToolRefused:
        return ToolRefused(
            LIMIT_EXCEEDED, f"{what} is over this agent's files limit of {self.max_bytes} bytes"
        )

    def read(self, target: Target) -> dict[str, Any]:
        parent = open_parent(target)
        try:
            fd = os.open(target.parts[-1], READ_FLAGS, dir_fd=parent)
        except OSError as error:
            raise refusal(error, target, target.parts[-1]) from None
        finally:
            os.close(parent)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = "a directory (list it)" if stat.S_ISDIR(info.st_mode) else "not a file"
                raise ToolRefused(INVALID_ARGUMENTS, f"{target.display} is {kind}")
            if info.st_size > self.max_bytes:
                raise self._too_large(f"{target.display} ({info.st_size} bytes)")
            os.set_blocking(fd, True)
            data = _read_at_most(fd, self.max_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:  # it grew while being read
            raise self._too_large(target.display)
        output: dict[str, Any] = {"path": target.display, "size": len(data)}
        try:
            output["content"] = data.decode("utf-8")
        except UnicodeDecodeError:
            output["content_base64"] = base64.b64encode(data).decode("ascii")
        return output

    def write(self, target: Target, data: bytes) -> dict[str, Any]:
        name = target.parts[-1]
        parent = open_parent(target, create=True)
        try:
            return self._write_in(parent, target, name, data)
        finally:
            os.close(parent)

    def _write_in(self, parent: int, target: Target, name: str, data: bytes) -> dict[str, Any]:
        mode = 0o644
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise ToolRefused(INVALID_ARGUMENTS, f"{target.display} is a directory")
            if stat.S_ISREG(existing.st_mode):
                mode = stat.S_IMODE(existing.st_mode)
        staging = f".{name[:200]}.{secrets.token_hex(6)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(staging, flags, 0o600, dir_fd=parent)
        except OSError as error:
            raise refusal(error, target, name) from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename replaces the name itself: a symlink there is replaced, never followed.
            os.rename(staging, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as error:
            os.unlink(staging, dir_fd=parent)
            raise refusal(error, target, name) from None
        return {"path": target.display, "size": len(data), "created": existing is None}

    def list(self, target: Target) -> dict[str, Any]:
        directory = open_directory(target)
        try:
            readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=directory)
        finally:
            os.close(directory)
        entries: list[dict[str, Any]] = []
        truncated = False
        try:
            with os.scandir(readable) as found:
                for entry in found:
                    if len(entries) == MAX_ENTRIES:
                        truncated = True
                        break
                    entries.append(_entry(entry))
        finally:
            os.close(readable)
        entries.sort(key=lambda entry: str(entry["name"]))
        return {"path": target.display, "entries": entries, "truncated": truncated}


def _entry(entry: os.DirEntry[str]) -> dict[str, Any]:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:  # removed meanwhile
        return {"name": entry.name, "type": "gone", "size": 0}
    if stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    elif stat.S_ISDIR(info.st_mode):
        kind = "directory"
    elif stat.S_ISREG(info.st_mode):
        kind = "file"
    else:
        kind = "other"
    return {"name": entry.name, "type": kind, "size": info.st_size if kind == "file" else 0}


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def resolved_roots(settings: AgentSettings) -> tuple[str, ...]:
    """The configured roots with their symlinks resolved now, once: beneath them none is."""
    return tuple(os.path.realpath(root) for root in settings.files_roots)


def build(settings: AgentSettings) -> Tool | None:
    """The files tool for these settings (with no roots, it refuses every task)."""
    return FilesTool(resolved_roots(settings), settings.agent_files_max_bytes)
