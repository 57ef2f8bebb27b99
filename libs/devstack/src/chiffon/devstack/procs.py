"""Processes we started and recorded, checked and stopped safely.

A bare pid is not enough: after a reboot or a long time the kernel reuses pids, and
``chiffon down`` must never signal a stranger. So a recorded process carries its
start time too, and is ours only while both match.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        """The live process ``pid`` (None if there is none)."""
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return None

    def process(self) -> psutil.Process | None:
        """The process if it is still this one and running (a zombie counts as dead)."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 0.5:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.Error:
            return None

    def alive(self) -> bool:
        return self.process() is not None


def signal_group(ref: ProcessRef, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process and, if it leads its own session (we start services
    with one), to everything in its group. False if it was already gone."""
    process = ref.process()
    if process is None:
        return False
    try:
        if os.getpgid(ref.pid) == ref.pid:
            os.killpg(ref.pid, sig)
        else:
            process.send_signal(sig)
    except (ProcessLookupError, psutil.Error):
        return False
    return True


def wait_gone(refs: list[ProcessRef], timeout: float) -> list[ProcessRef]:
    """Wait until every process has exited; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    remaining = [ref for ref in refs if ref.alive()]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [ref for ref in remaining if ref.alive()]
    return remaining


def terminate(refs: list[ProcessRef], timeout: float) -> tuple[list[ProcessRef], list[ProcessRef]]:
    """SIGTERM every process, wait up to ``timeout``, then SIGKILL the rest.

    Returns (stopped gracefully, killed).
    """
    signalled = [ref for ref in refs if signal_group(ref, signal.SIGTERM)]
    stubborn = wait_gone(signalled, timeout)
    for ref in stubborn:
        signal_group(ref, signal.SIGKILL)
    wait_gone(stubborn, 5.0)
    graceful = [ref for ref in signalled if ref not in stubborn]
    return graceful, stubborn
