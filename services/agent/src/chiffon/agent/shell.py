"""The shell tool: an allow-listed command run as argv, never through a shell.

A string command is split like a shell splits words (shlex.split) and the words are
passed to exec as they are: `echo "a; rm -rf /"` prints `a; rm -rf /`. The command is
resolved on the agent's own fixed PATH and must be allow-listed by name (or, for a name
with a slash, by its exact path). The child gets a minimal environment (PATH, LANG,
HOME = its scratch directory) plus the task's env: never the agent's own environment,
which holds its credential settings. It runs in its own process group, so a timeout or
a cancel kills everything it started.

Usage: CPU (user + system) is wait4's rusage of the child, including the descendants it
waited for. Peak memory is the task's own, not the agent's: wait4's ru_maxrss cannot be
trusted below the agent's own peak, because Linux records the high-water mark of the image
a process leaves at exec, and a spawned child leaves the agent's (vfork, which Popen uses
here, and posix_spawn alike: `true` reported ~90 MiB, the agent's RSS). So the peak is
ru_maxrss when it exceeds the agent's own (then it can only be the task's image or a
descendant's); otherwise the largest VmHWM (which restarts at exec) read from
/proc/<pid>/status when it first writes output and every SAMPLE_SECONDS while it runs: a lower bound for a short task (0 if it ended before any
read caught it; reading its figure after exit is impossible, an exited process has no
memory left to report, and its rusage holds the agent's).

The child is reaped on the event loop: a pidfd becomes readable when it exits, then
wait4(WNOHANG) takes its status and rusage. No thread per task (the hand-off to a wait4
thread and back cost more loop callbacks than the rest of the task), and asyncio's child
watcher never sees the pid (it would reap it and lose the rusage). Its pipes are read with
add_reader and os.read, without a StreamReader and transport per pipe.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiffon.agent.children import Capture, PipeReader, reaped_on_exit, task_peak, vm_hwm_bytes
from chiffon.agent.gpu import GpuProbe
from chiffon.agent.tools.base import STDERR, STDOUT, ToolRefused

__all__ = ["STDERR", "STDOUT", "ShellCommand", "ShellOutcome", "ShellRunner", "ToolRefused"]

#: The only PATH commands are resolved on, and the PATH the child sees.
AGENT_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_ARGS = 4096
MAX_ARG_BYTES = 128 * 1024
MAX_ENV = 256
#: After a cancel's SIGTERM, how long the process group has before SIGKILL.
TERM_GRACE_SECONDS = 0.5
#: How often a running task's VmHWM is read (its peak memory when wait4's is the agent's).
SAMPLE_SECONDS = 0.1
#: Variables that would let a task change what an allow-listed program runs.
_REFUSED_ENV_PREFIXES = ("LD_", "DYLD_")
_REFUSED_ENV = frozenset({"PATH", "BASH_ENV", "ENV", "IFS"})


@dataclass(frozen=True)
class ShellCommand:
    argv: tuple[str, ...]
    executable: str
    cwd: str | None
    env: Mapping[str, str]
    timeout: float


@dataclass
class ShellOutcome:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: float
    cpu_seconds: float
    peak_memory_bytes: float
    gpu_memory_bytes: float
    timed_out: bool = False
    cancelled: bool = False


def _check_text(value: str, what: str) -> str:
    if "\x00" in value:
        raise ToolRefused("invalid_arguments", f"{what} contains a NUL character")
    return value


def parse_shell_arguments(
    arguments: Mapping[str, Any],
    *,
    allow: tuple[str, ...],
    default_timeout: float,
    max_timeout: float,
    request_timeout: float = 0.0,
) -> ShellCommand:
    """Validate the task's arguments against the allow-list; ToolRefused if they do not pass."""
    unknown = set(arguments) - {"command", "cwd", "env", "timeout_seconds"}
    if unknown:
        raise ToolRefused("invalid_arguments", f"unknown shell arguments: {sorted(unknown)}")
    command = arguments.get("command")
    if isinstance(command, str):
        try:
            argv = shlex.split(_check_text(command, "command"))
        except ValueError as error:
            raise ToolRefused("invalid_arguments", f"command cannot be split: {error}") from None
    elif isinstance(command, list) and all(isinstance(word, str) for word in command):
        argv = [_check_text(word, "an argument") for word in command]
    else:
        raise ToolRefused("invalid_arguments", "command must be a string or a list of strings")
    if not argv or not argv[0]:
        raise ToolRefused("invalid_arguments", "command is empty")
    if len(argv) > MAX_ARGS or sum(len(word.encode()) for word in argv) > MAX_ARG_BYTES:
        raise ToolRefused("invalid_arguments", "command is too long")
    executable = resolve_command(argv[0], allow)

    cwd = arguments.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise ToolRefused("invalid_arguments", "cwd must be a non-empty string")
        _check_text(cwd, "cwd")

    env_in = arguments.get("env") or {}
    if not isinstance(env_in, dict):
        raise ToolRefused("invalid_arguments", "env must be an object of strings")
    if len(env_in) > MAX_ENV:
        raise ToolRefused("invalid_arguments", f"env has more than {MAX_ENV} variables")
    env: dict[str, str] = {}
    for key, value in env_in.items():
        if not isinstance(value, str) or not key or "=" in key:
            raise ToolRefused(
                "invalid_arguments", f"env {key!r} must be a name with a string value"
            )
        if key.upper() in _REFUSED_ENV or key.upper().startswith(_REFUSED_ENV_PREFIXES):
            raise ToolRefused("not_allowed", f"env {key!r} may not be set by a task")
        env[_check_text(key, "env")] = _check_text(value, f"env {key!r}")

    timeout = arguments.get("timeout_seconds")
    if timeout is None:
        timeout = request_timeout if request_timeout > 0 else default_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ToolRefused("invalid_arguments", "timeout_seconds must be a positive number")
    if timeout > max_timeout:
        raise ToolRefused("invalid_arguments", f"timeout_seconds may be at most {max_timeout:g}")
    return ShellCommand(tuple(argv), executable, cwd, env, float(timeout))


def resolve_command(name: str, allow: tuple[str, ...]) -> str:
    """The absolute path of allow-listed command `name`; ToolRefused otherwise."""
    if "/" in name:
        if name not in allow:
            raise ToolRefused("not_allowed", f"command {name!r} is not allowed on this agent")
        if not (os.path.isfile(name) and os.access(name, os.X_OK)):
            raise ToolRefused("not_found", f"command {name!r} is not installed on this agent")
        return name
    if name not in allow:
        raise ToolRefused("not_allowed", f"command {name!r} is not allowed on this agent")
    now = time.monotonic()
    known = _found.get(name)
    if known is not None and known[1] > now:
        return known[0]
    found = shutil.which(name, path=AGENT_PATH)
    if found is None:
        raise ToolRefused("not_found", f"command {name!r} is not installed on this agent")
    _found[name] = (found, now + FOUND_FOR_SECONDS)
    return found


FOUND_FOR_SECONDS = 5.0
"""How long a command found on AGENT_PATH is taken as found there: the search stats every
directory of the path (0.1 ms of a busy agent's task); a command installed or removed is
seen within this time (a removed one meanwhile fails to start, as ``start_failed``)."""
_found: dict[str, tuple[str, float]] = {}


def _group_gone(pgid: int) -> bool:
    """True if no process is left in the process group (nothing can still use its scratch)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _empty_private_dir(path: str) -> bool:
    try:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or stat.S_IMODE(info.st_mode) != 0o700:
            return False
        if info.st_uid != os.getuid():
            return False
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _remove_scratch(path: str) -> None:
    # Most tasks leave their scratch directory empty: one rmdir. Otherwise remove the tree,
    # making directories the task made read-only writable again.
    try:
        os.rmdir(path)
        return
    except OSError:
        pass

    def writable_again(function: Any, name: str, _: Any) -> None:
        try:
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, ignore_errors=True)
            else:
                function(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=writable_again)


class ShellRunner:
    """Runs ShellCommands; children are reaped on the event loop through pidfds."""

    def __init__(
        self,
        *,
        scratch_root: Path,
        output_cap: int,
        max_concurrency: int,
        gpu: GpuProbe,
    ) -> None:
        self._scratch_root = scratch_root
        self._scratch_ready = False
        # Empty scratch directories of finished tasks, given to the next: on ext4 a mkdir
        # and an rmdir cost the agent 0.26 ms of the 1.6 ms it spends on a task.
        self._free_scratch: list[str] = []
        self._output_cap = output_cap
        self._max_concurrency = max_concurrency
        self._gpu = gpu
        self._null: int | None = None
        self._spawner = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spawn")

    def _devnull(self) -> int:
        # Opened once (Popen's DEVNULL opens and closes /dev/null for every child).
        if self._null is None:
            self._null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return self._null

    def close(self) -> None:
        """Remove the spare scratch directories (a child still running is reaped by its
        pidfd's callback)."""
        while self._free_scratch:
            _remove_scratch(self._free_scratch.pop())
        self._spawner.shutdown(wait=True)
        if self._null is not None:
            os.close(self._null)
            self._null = None

    def _cwd(self, command: ShellCommand, scratch: Path) -> str:
        if command.cwd is None:
            return str(scratch)
        candidate = Path(command.cwd)
        if not candidate.is_absolute():
            candidate = (scratch / candidate).resolve()
            if not candidate.is_relative_to(scratch.resolve()):
                raise ToolRefused(
                    "invalid_arguments", "a relative cwd must stay in the scratch directory"
                )
            candidate.mkdir(parents=True, exist_ok=True)
        if not candidate.is_dir():
            raise ToolRefused("invalid_arguments", f"cwd {command.cwd!r} is not a directory")
        return str(candidate)

    async def run(
        self,
        command: ShellCommand,
        *,
        on_line: Callable[[int, str], None],
        cancelled: asyncio.Future[None],
    ) -> ShellOutcome:
        scratch_dir = self._free_scratch.pop() if self._free_scratch else self._new_scratch()
        reusable = False
        try:
            scratch = Path(scratch_dir)
            cwd = self._cwd(command, scratch)
            env = {"PATH": AGENT_PATH, "LANG": "C.UTF-8", "HOME": scratch_dir, **command.env}
            try:
                outcome, reusable = await self._run(command, cwd, env, on_line, cancelled)
            except ToolRefused:
                reusable = True  # nothing started in it
                raise
            return outcome
        finally:
            # A task's scratch directory is given to the next task only if it is as new:
            # empty, still 0700 and ours, and no process of the task's group is left to
            # write in it. Otherwise it is removed.
            if (
                reusable
                and len(self._free_scratch) < self._max_concurrency
                and _empty_private_dir(scratch_dir)
            ):
                self._free_scratch.append(scratch_dir)
            else:
                _remove_scratch(scratch_dir)

    def _new_scratch(self) -> str:
        if not self._scratch_ready:
            self._scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._scratch_ready = True
        try:
            return tempfile.mkdtemp(prefix="task-", dir=self._scratch_root)
        except FileNotFoundError:  # the root was removed under a running agent
            self._scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            return tempfile.mkdtemp(prefix="task-", dir=self._scratch_root)

    async def _run(
        self,
        command: ShellCommand,
        cwd: str,
        env: dict[str, str],
        on_line: Callable[[int, str], None],
        cancelled: asyncio.Future[None],
    ) -> tuple[ShellOutcome, bool]:
        """The outcome, and whether the task's process group is gone."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # Plain pipes rather than Popen's PIPE: no file objects to make and close per task.
        out_read, out_write = os.pipe2(os.O_CLOEXEC)
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        spawn = functools.partial(
            subprocess.Popen,
            list(command.argv),
            executable=command.executable,
            stdin=self._devnull(),
            stdout=out_write,
            stderr=err_write,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        pipes = (out_read, out_write, err_read, err_write)
        # Popen (vfork + exec here), not asyncio's subprocess: we must be the one to reap
        # the child, with wait4, to get its rusage. On a thread: vfork holds the calling
        # thread until the child has exec'd (about 0.8 ms for `true`); Python releases
        # the GIL meanwhile, so the loop serves other tasks' gRPC in that time.
        spawning = loop.run_in_executor(self._spawner, spawn)
        try:
            process = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The agent is stopping: the spawn finishes in its thread, using the pipes.
            spawning.add_done_callback(functools.partial(_stop_spawned, pipes))
            raise
        except OSError as error:
            for fd in pipes:
                os.close(fd)
            raise ToolRefused(
                "start_failed", f"could not start {command.argv[0]!r}: {error.strerror}"
            ) from None
        os.close(out_write)  # the child has its own; EOF comes when its group closes them
        os.close(err_write)
        pid = process.pid
        # Popen must never reap the pid (wait4 below does): it believes it is done.
        process.returncode = -signal.SIGKILL
        sampled_peak = 0.0  # at once it would read the image half-loaded (~4 KiB)

        def sample_now() -> None:
            # Also when it first writes: a short task is loaded by then and still alive.
            nonlocal sampled_peak
            sampled_peak = max(sampled_peak, vm_hwm_bytes(pid))

        out = Capture(self._output_cap, on_line, STDOUT)
        err = Capture(self._output_cap, on_line, STDERR)
        readers = [
            PipeReader(loop, out_read, out, sample_now),
            PipeReader(loop, err_read, err, sample_now),
        ]
        waited = reaped_on_exit(loop, pid)

        sampler: asyncio.TimerHandle | None = None

        def sample() -> None:
            nonlocal sampler
            if waited.done():
                return
            sample_now()
            sampler = loop.call_later(SAMPLE_SECONDS, sample)

        sampler = loop.call_later(SAMPLE_SECONDS, sample)
        gpu_peak = 0.0
        gpu_sampler = (
            asyncio.ensure_future(self._sample_gpu(pid, waited)) if self._gpu.present else None
        )
        reaped = False

        def kill(sig: int) -> None:
            if reaped or waited.done():
                return
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        timed_out = was_cancelled = False
        try:
            watched: set[asyncio.Future[Any]] = {waited, cancelled}
            done, _ = await asyncio.wait(
                watched, timeout=command.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if waited not in done:
                if cancelled in done:
                    was_cancelled = True
                    kill(signal.SIGTERM)
                    finished, _ = await asyncio.wait({waited}, timeout=TERM_GRACE_SECONDS)
                    if not finished:
                        kill(signal.SIGKILL)
                else:
                    timed_out = True
                    kill(signal.SIGKILL)
            status, usage = await asyncio.shield(waited)
            reaped = True
        except asyncio.CancelledError:
            kill(signal.SIGKILL)
            raise
        finally:
            if sampler is not None:
                sampler.cancel()
            # The group may still hold the pipes (a child that forked); it is killed above
            # on timeout and cancel; otherwise give the readers a moment, then stop reading.
            pending = [reader for reader in readers if not reader.done.done()]
            if pending:
                await asyncio.wait([reader.done for reader in pending], timeout=1.0)
            for reader in readers:
                reader.stop()
            if not reaped:
                kill(signal.SIGKILL)  # the pidfd's callback still reaps it
            os.close(out_read)
            os.close(err_read)
            if gpu_sampler is not None:
                gpu_peak = await gpu_sampler
        duration_ms = (time.perf_counter() - started) * 1000.0
        exit_code = os.waitstatus_to_exitcode(status)
        group_gone = not (timed_out or was_cancelled) and _group_gone(pid)
        outcome = ShellOutcome(
            exit_code=exit_code,
            stdout=out.text(),
            stderr=err.text(),
            duration_ms=duration_ms,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            peak_memory_bytes=task_peak(usage, sampled_peak),
            gpu_memory_bytes=gpu_peak,
            timed_out=timed_out,
            cancelled=was_cancelled,
        )
        return outcome, group_gone

    async def _sample_gpu(self, pid: int, waited: asyncio.Future[Any]) -> float:
        peak = 0.0
        while not waited.done():
            peak = max(peak, await asyncio.to_thread(self._gpu.process_memory, pid))
            await asyncio.sleep(0.2)
        return peak


def _stop_spawned(pipes: tuple[int, ...], spawned: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    """A spawn whose task was cancelled meanwhile: close its pipes, kill what it started."""
    for fd in pipes:
        os.close(fd)
    if spawned.cancelled() or spawned.exception() is not None:
        return
    try:
        os.killpg(spawned.result().pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
