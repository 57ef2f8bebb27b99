"""Starts sandbox_runner.py for one python task and waits for it: the agent's side of the fence.

The child is spawned with vfork + exec (Popen without preexec_fn or user=, which would make
it a full fork of the agent) on a thread, reaped on the event loop through a pidfd with
wait4 (its rusage), like the shell tool. The fences themselves are put up by the runner
before it reads the task (see sandbox_runner.py); this side gives it a scratch directory
owned by the task's uid, an empty environment, the payload on a memfd as stdin, a pipe on
which it answers, and the wall-time limit: past it (or on a cancel) every process of the
task's uid is killed (`sweep`), the guard reaps them and exits; a guard that does not is
killed with its process group, and the uid swept again.

A uid of its own per concurrent task (uid_base + slot) when the agent is root: RLIMIT_NPROC
counts the processes of a uid, so a fork bomb meets its own limit and no other task's, and
the sweep (kill(-1) as that uid) reaches the task's processes only, even one that left the
process group with setsid.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import marshal
import os
import py_compile
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chiffon.agent.children import Capture, PipeReader, reaped_on_exit, task_peak, vm_hwm_bytes
from chiffon.agent.shell import AGENT_PATH
from chiffon.agent.tools.base import STDERR, STDOUT, ToolRefused

RUNNER = str(Path(__file__).with_name("sandbox_runner.py"))
#: -I: no PYTHON* variables, no user site, no current directory on sys.path; -S: no site
#: import (3-6 ms of a ~17 ms start here); -B: no .pyc written.
INTERPRETER_FLAGS = ("-I", "-S", "-B")
#: The guard's exit code when the snippet's process was killed by signal N: 64 + N.
GUARD_SIGNALLED = 64
SAMPLE_SECONDS = 0.1
#: How long the guard has to reap and exit once its task's processes are killed.
GUARD_GRACE_SECONDS = 5.0
#: How long the pipes may stay open once the runner is gone (a child still holding them).
DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class Fences:
    cpu_seconds: int
    memory_bytes: int
    file_bytes: int
    processes: int
    #: "isolate" (a new network namespace, or refuse), "try" (one if the OS allows), "host".
    network: str
    site_dirs: tuple[str, ...] = ()


@dataclass
class RunnerOutcome:
    answer: bytes
    answer_cut: bool
    #: The runner's exit code (negative: killed by that signal); see snippet_signal.
    exit_code: int
    #: Whether a guard ran the snippet in a child (the agent is root; see sandbox_runner.py).
    guarded: bool
    stdout: str
    stderr: str
    duration_ms: float
    cpu_seconds: float
    peak_memory_bytes: float
    timed_out: bool = False
    cancelled: bool = False

    @property
    def snippet_signal(self) -> int:
        """The signal that killed the snippet's process, 0 if none did (or none is known)."""
        if not self.guarded:
            return -self.exit_code if self.exit_code < 0 else 0
        if self.exit_code > GUARD_SIGNALLED:
            return self.exit_code - GUARD_SIGNALLED
        return -self.exit_code if self.exit_code < 0 else 0  # the guard's own, killed with it


#: Where agents on one host claim their task uids (a lock per uid, held while they run).
UID_CLAIMS = Path(tempfile.gettempdir()) / "chiffon-task-uids"
#: How far past uid_base an agent looks for uids no other agent holds.
UID_SEARCH = 1 << 20


class UidSlots:
    """One (uid, gid) per task running at once, from uid_base; (-1, -1): keep the agent's.

    The uids are claimed, not assumed: a second agent on the same host with the same
    uid_base would otherwise run its tasks as the same uids, and each agent's sweep (kill
    every process of the uid) would reach the other's tasks. Each uid is claimed with an
    exclusive flock on UID_CLAIMS/<uid>, held for the agent's life and released by the
    kernel when it exits, however it exits; a uid another agent holds is skipped."""

    def __init__(self, uid_base: int, slots: int) -> None:
        self.dedicated = os.geteuid() == 0 and uid_base > 0
        self._free: asyncio.Queue[int] | None = None
        self._uid_base = uid_base
        self._slots = slots
        self._claims: list[int] = []  # the lock files' descriptors, open while we run

    def _claim(self) -> list[int]:
        UID_CLAIMS.mkdir(mode=0o700, exist_ok=True)
        uids: list[int] = []
        for uid in range(self._uid_base, self._uid_base + UID_SEARCH):
            if len(uids) == self._slots:
                return uids
            fd = os.open(UID_CLAIMS / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._claims.append(fd)
            uids.append(uid)
        raise RuntimeError(f"no free task uid from {self._uid_base}: other agents hold them")

    async def take(self) -> int:
        if not self.dedicated:
            return -1
        if self._free is None:
            self._free = asyncio.Queue()
            for uid in self._claim():
                self._free.put_nowait(uid)
        return await self._free.get()

    def give_back(self, uid: int) -> None:
        if uid >= 0 and self._free is not None:
            self._free.put_nowait(uid)


def compiled_runner(scratch_root: Path) -> str:
    """sandbox_runner.py compiled once into the agent's scratch root (0700, the agent's):
    a script given as source is compiled at every start, ~8 ms of a task's ~40 ms here."""
    source = Path(RUNNER).read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = scratch_root / f"sandbox-runner-{digest}.pyc"
    if not target.exists():
        scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = f"{target}.{os.getpid()}.tmp"
        py_compile.compile(
            RUNNER,
            cfile=staging,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        os.replace(staging, target)
    return str(target)


def new_scratch(scratch_root: Path, uid: int) -> str:
    scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = tempfile.mkdtemp(prefix="python-", dir=scratch_root)
    if uid >= 0:
        try:
            os.chown(path, uid, uid)
        except OSError as error:  # e.g. EINVAL: a user namespace that maps no such uid
            os.rmdir(path)
            raise ToolRefused(
                "forbidden",
                f"the task's uid {uid} cannot own its scratch directory ({error.strerror}): "
                "CHIFFON_AGENT_PYTHON_UID_BASE must start a range of uids this machine maps",
            ) from None
    return path


def remove_scratch(path: str) -> None:
    # The agent is root or the task's own user: nothing the task did can keep it from this.
    shutil.rmtree(path, ignore_errors=True)


def sweep(uid: int) -> None:
    """Kill every process of `uid` (a task's leftovers); blocking, run it on a thread."""
    subprocess.run(  # noqa: S603 — our own runner, fixed arguments
        [sys.executable, *INTERPRETER_FLAGS, RUNNER, "sweep", str(uid), str(uid)],
        env={"PATH": AGENT_PATH},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        timeout=10,
    )


class Sandbox:
    """Runs snippets in sandbox_runner.py children, each fenced, timed and reaped."""

    def __init__(self, *, output_cap: int, answer_cap: int, uid_base: int, slots: int) -> None:
        self._output_cap = output_cap
        self._answer_cap = answer_cap
        self.uids = UidSlots(uid_base, slots)
        self._spawner = ThreadPoolExecutor(max_workers=2, thread_name_prefix="python-spawn")
        self._runners: dict[Path, str] = {}

    def _runner(self, scratch_root: Path) -> str:
        runner = self._runners.get(scratch_root)
        if runner is None or not os.path.exists(runner):
            runner = self._runners[scratch_root] = compiled_runner(scratch_root)
        return runner

    def close(self) -> None:
        self._spawner.shutdown(wait=True)

    async def run(
        self,
        code: str,
        inputs: Mapping[str, Any],
        fences: Fences,
        *,
        scratch_root: Path,
        timeout: float,
        cancelled: asyncio.Future[None],
        on_line: Callable[[int, str], None],
    ) -> RunnerOutcome:
        uid = await self.uids.take()
        try:
            scratch = new_scratch(scratch_root, uid)  # a mkdir and a chown: not worth a thread
            argv_start = (self._runner(scratch_root), uid)
            try:
                outcome = await self._run(
                    code, inputs, fences, argv_start, scratch, timeout, cancelled, on_line
                )
            finally:
                try:
                    os.rmdir(scratch)  # most snippets leave it empty
                except OSError:
                    await asyncio.to_thread(remove_scratch, scratch)
        finally:
            self.uids.give_back(uid)
        return outcome

    def _argv(self, runner: str, fences: Fences, uid: int, channel: int) -> list[str]:
        limits = (fences.cpu_seconds, fences.memory_bytes, fences.file_bytes, fences.processes)
        return [
            sys.executable,
            *INTERPRETER_FLAGS,
            runner,
            "run",
            *(str(limit) for limit in limits),
            str(uid),
            str(uid),
            fences.network,
            str(channel),
            *fences.site_dirs,
        ]

    async def _run(  # noqa: PLR0913 — one task's every part
        self,
        code: str,
        inputs: Mapping[str, Any],
        fences: Fences,
        runner_and_uid: tuple[str, int],
        scratch: str,
        timeout: float,
        cancelled: asyncio.Future[None],
        on_line: Callable[[int, str], None],
    ) -> RunnerOutcome:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        runner, uid = runner_and_uid
        payload = os.memfd_create("python-task", os.MFD_CLOEXEC)
        os.write(payload, marshal.dumps((code, dict(inputs))))
        os.lseek(payload, 0, os.SEEK_SET)
        out_read, out_write = os.pipe2(os.O_CLOEXEC)
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        answer_read, answer_write = os.pipe2(os.O_CLOEXEC)
        env = {"PATH": AGENT_PATH, "LANG": "C.UTF-8", "HOME": scratch, "TMPDIR": scratch}
        spawn = functools.partial(
            subprocess.Popen,
            self._argv(runner, fences, uid, answer_write),
            executable=sys.executable,
            stdin=payload,
            stdout=out_write,
            stderr=err_write,
            pass_fds=(answer_write,),
            cwd=scratch,
            env=env,
            start_new_session=True,
        )
        childs_ends = (payload, out_write, err_write, answer_write)
        ours = (out_read, err_read, answer_read)
        # On a thread: vfork holds the calling thread until the child has exec'd.
        spawning = loop.run_in_executor(self._spawner, spawn)
        try:
            process = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The agent is stopping: the spawn finishes in its thread, still using the fds.
            spawning.add_done_callback(functools.partial(_abandon, childs_ends + ours))
            raise
        except OSError as error:
            for fd in childs_ends + ours:
                os.close(fd)
            raise ToolRefused(
                "start_failed", f"could not start the python runner: {error.strerror}"
            ) from None
        for fd in childs_ends:
            os.close(fd)  # the child has its own
        pid = process.pid
        process.returncode = -signal.SIGKILL  # Popen must never reap it: wait4 below does
        sampled_peak = 0.0

        def sample_now() -> None:
            nonlocal sampled_peak
            sampled_peak = max(sampled_peak, vm_hwm_bytes(pid))

        out = Capture(self._output_cap, on_line, STDOUT)
        err = Capture(self._output_cap, on_line, STDERR)
        answer = Capture(self._answer_cap, lambda _stream, _text: None, 0)
        readers = [
            PipeReader(loop, out_read, out, sample_now),
            PipeReader(loop, err_read, err, sample_now),
            PipeReader(loop, answer_read, answer, sample_now),
        ]
        waited = reaped_on_exit(loop, pid)
        sampler: asyncio.TimerHandle | None = None

        def sample() -> None:
            nonlocal sampler
            if not waited.done():
                sample_now()
                sampler = loop.call_later(SAMPLE_SECONDS, sample)

        sampler = loop.call_later(SAMPLE_SECONDS, sample)

        def kill_group() -> None:
            if not waited.done():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

        timed_out = was_cancelled = False
        status = -1
        try:
            watched: set[asyncio.Future[Any]] = {waited, cancelled}
            done, _ = await asyncio.wait(
                watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if waited not in done:
                was_cancelled = cancelled in done
                timed_out = not was_cancelled
                if uid >= 0:
                    # Kill the task's processes, not its guard: the guard then reaps them
                    # (it is their subreaper) and exits, so none is left to init to reap.
                    await asyncio.to_thread(sweep, uid)
                    await asyncio.wait({waited}, timeout=GUARD_GRACE_SECONDS)
                kill_group()
            status, usage = await asyncio.shield(waited)
        except asyncio.CancelledError:
            kill_group()  # the agent is stopping; the pidfd's callback still reaps it
            raise
        finally:
            sampler.cancel()
            if uid >= 0 and not (status >= 0 and os.WIFEXITED(status)):
                # The guard was killed before it could sweep: what the task started may live.
                await asyncio.to_thread(sweep, uid)
            pending = [reader.done for reader in readers if not reader.done.done()]
            if pending:
                await asyncio.wait(pending, timeout=DRAIN_SECONDS)
            for reader in readers:
                reader.stop()
            for fd in (out_read, err_read, answer_read):
                os.close(fd)
        return RunnerOutcome(
            answer=bytes(answer.kept),
            answer_cut=answer.dropped > 0,
            exit_code=os.waitstatus_to_exitcode(status),
            guarded=uid >= 0,
            stdout=out.text(),
            stderr=err.text(),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            peak_memory_bytes=task_peak(usage, sampled_peak),
            timed_out=timed_out,
            cancelled=was_cancelled,
        )


def _abandon(fds: tuple[int, ...], spawned: asyncio.Future[subprocess.Popen[bytes]]) -> None:
    """A spawn whose task was cancelled meanwhile: close its fds, kill what it started."""
    for fd in fds:
        os.close(fd)
    if spawned.cancelled() or spawned.exception() is not None:
        return
    try:
        os.killpg(spawned.result().pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
