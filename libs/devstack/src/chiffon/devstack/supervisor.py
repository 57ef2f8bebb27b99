"""Service processes: start one detached, tell whether it is ours and ready, stop them.

Each service is its own OS process (``python -m chiffon.<name>``) in a session of its
own, so it outlives ``chiffon up`` and Ctrl-C in that terminal does not reach it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from chiffon.devstack.ports import LOCALHOST
from chiffon.devstack.procs import ProcessRef, terminate
from chiffon.devstack.state import ProcessRecord

# Start order: the gateway last, as it fronts the others (each service still waits
# for its own dependencies, so the order is a courtesy, not a requirement).
SERVICES: tuple[str, ...] = ("registry", "executor", "cost", "trigger", "agent", "gateway")

# First line written to a service's log at each start: `up` shows only this start's lines.
START_MARKER = "--- chiffon up: starting"


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    replica: int
    port: int

    @property
    def label(self) -> str:
        return f"{self.name}-{self.replica}" if self.name == "executor" else self.name

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def module(self) -> str:
        return f"chiffon.{self.name}"


def is_ours(record: ProcessRecord) -> bool:
    """The recorded process is alive and still runs that service (not a reused pid)."""
    ref = record.ref
    process = ref.process() if ref else None
    if process is None:
        return False
    try:
        return f"chiffon.{record.name}" in process.cmdline()
    except Exception:  # noqa: BLE001 — psutil.AccessDenied & co: not ours to manage
        return False


def spawn(spec: ServiceSpec, env: Mapping[str, str], log_file: Path, cwd: Path) -> ProcessRecord:
    """Start one service replica; its stdout and stderr append to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child_env = {
        **env,
        "CHIFFON_HOST": LOCALHOST,
        "CHIFFON_PORT": str(spec.port),
        "CHIFFON_REPLICA": str(spec.replica),
        "PYTHONUNBUFFERED": "1",  # log lines reach the file as they are written
    }
    with log_file.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"{START_MARKER} {spec.label} on port {spec.port} at {stamp}\n".encode())
        log.flush()
        child = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            env=child_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ref = ProcessRef.of(child.pid)
    return ProcessRecord(
        name=spec.name,
        replica=spec.replica,
        pid=child.pid,
        # A child that died at once has no create time; it shows as dead, as it is.
        create_time=ref.create_time if ref else time.time(),
        url=spec.url,
        port=spec.port,
        log=str(log_file),
    )


def readiness(url: str, timeout: float = 2.0) -> tuple[bool, str]:
    """GET /readyz: (ready, a short reason when not)."""
    try:
        response = httpx.get(f"{url}/readyz", timeout=timeout)
    except httpx.ConnectError:
        return False, "not listening yet"
    except httpx.TimeoutException:
        return False, "no answer"
    except httpx.HTTPError as error:
        return False, type(error).__name__
    if response.status_code == 200:
        return True, "ready"
    try:
        components = response.json().get("components", {})
        failing = [name for name, detail in components.items() if not detail.get("ok")]
        return False, "not ready: " + (", ".join(failing) or str(response.status_code))
    except ValueError:
        return False, f"HTTP {response.status_code}"


def healthy(record: ProcessRecord) -> bool:
    return is_ours(record) and readiness(record.url)[0]


def check_all(records: Sequence[ProcessRecord]) -> list[bool]:
    """Health of many services at once (in parallel: `status` stays fast)."""
    if not records:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(records))) as pool:
        return list(pool.map(healthy, records))


@dataclass
class NotReady:
    record: ProcessRecord
    reason: str
    exited: bool = False


def wait_ready(records: Sequence[ProcessRecord], timeout: float) -> list[NotReady]:
    """Poll every /readyz until all answer 200; stop early if a process dies.

    Returns what was still not ready at the deadline (empty: all ready).
    """
    deadline = time.monotonic() + timeout
    pending = list(records)
    reasons: dict[str, str] = {}
    while pending:
        for record in list(pending):
            if not is_ours(record):
                return [NotReady(record, "exited during start-up", exited=True)]
            ok, reason = readiness(record.url, timeout=1.0)
            if ok:
                pending.remove(record)
            else:
                reasons[record.label] = reason
        if not pending:
            break
        if time.monotonic() >= deadline:
            return [NotReady(record, reasons.get(record.label, "not ready")) for record in pending]
        time.sleep(0.2)
    return []


def stop(
    records: Sequence[ProcessRecord], timeout: float
) -> tuple[list[ProcessRecord], list[ProcessRecord]]:
    """SIGTERM every live service (in parallel), SIGKILL those still up after ``timeout``.

    Returns (stopped gracefully, killed).
    """
    live = [record for record in records if is_ours(record)]
    by_ref = {record.ref: record for record in live if record.ref is not None}
    graceful, killed = terminate(list(by_ref), timeout)
    return [by_ref[ref] for ref in graceful], [by_ref[ref] for ref in killed]


def service_env(
    base: Mapping[str, str], overrides: Mapping[str, str], drop: Sequence[str] = ()
) -> dict[str, str]:
    env = {key: value for key, value in base.items() if key not in drop}
    env.update(overrides)
    return env


def current_env() -> dict[str, str]:
    return dict(os.environ)
