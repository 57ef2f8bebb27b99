"""What the shell and python tools share about a child process: its pipes read on the
event loop into capped captures, its exit and rusage taken through a pidfd and wait4 (no
thread per task, and asyncio's child watcher never sees the pid), and its peak memory.

Why each works the way it does is in chiffon.agent.shell's docstring."""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field

#: A line longer than this is sent in pieces (a child printing without newlines).
MAX_LINE_BYTES = 64 * 1024


def reaped_on_exit(
    loop: asyncio.AbstractEventLoop, pid: int
) -> asyncio.Future[tuple[int, resource.struct_rusage]]:
    """The child's (wait status, rusage), once it has exited and been reaped here: a pidfd
    becomes readable at its exit, then wait4(WNOHANG) takes both."""
    waited: asyncio.Future[tuple[int, resource.struct_rusage]] = loop.create_future()
    pidfd = os.pidfd_open(pid)

    def exited() -> None:
        try:
            reaped, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError as error:  # not ours to reap: cannot happen, say so
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not waited.done():
                waited.set_exception(error)
            return
        if reaped == 0:
            return  # not waitable yet: the pidfd will say so again
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not waited.done():
            waited.set_result((status, usage))

    loop.add_reader(pidfd, exited)
    return waited


@dataclass
class Capture:
    cap: int
    on_line: Callable[[int, str], None]
    stream: int
    kept: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    partial: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))
        if room <= 0:
            return
        self.partial += chunk[:room]
        while True:
            newline = self.partial.find(b"\n")
            if newline < 0:
                if len(self.partial) >= MAX_LINE_BYTES:
                    self._emit(bytes(self.partial))
                    self.partial.clear()
                return
            self._emit(bytes(self.partial[:newline]))
            del self.partial[: newline + 1]

    def close(self) -> None:
        if self.partial:
            self._emit(bytes(self.partial))
            self.partial.clear()

    def _emit(self, line: bytes) -> None:
        self.on_line(self.stream, line.decode("utf-8", "replace"))

    def text(self) -> str:
        text = self.kept.decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[output truncated: {self.dropped} more bytes not kept]"
        return text


class PipeReader:
    """Reads a child's pipe on the loop (add_reader + os.read) into a Capture until EOF."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        capture: Capture,
        on_first_output: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._capture = capture
        self._on_first_output: Callable[[], None] | None = on_first_output
        self.done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            if self._on_first_output is not None:
                self._on_first_output()
                self._on_first_output = None
            self._capture.feed(chunk)
        else:
            self.stop()

    def stop(self) -> None:
        """Stop reading (at EOF, or when the child's group still holds the pipe)."""
        if not self.done.done():
            self._loop.remove_reader(self._fd)
            self._capture.close()
            self.done.set_result(None)


def vm_hwm_bytes(pid: int) -> float:
    """The peak resident memory of `pid`'s current image (VmHWM); 0 if it has none any more."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            data = status.read()
    except OSError:
        return 0.0
    start = data.find(b"VmHWM:")
    if start < 0:
        return 0.0
    end = data.find(b"kB", start)
    try:
        return float(int(data[start + 6 : end])) * 1024.0
    except ValueError:
        return 0.0


def task_peak(usage: resource.struct_rusage, sampled: float) -> float:
    """The task's peak resident memory in bytes (see the module's docstring)."""
    reported = float(usage.ru_maxrss) * 1024.0  # Linux: kilobytes
    own = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0
    return reported if reported > own else sampled
