"""The whole dev stack through the CLI a user types: up, status, a killed replica, a busy
port, down. Real processes on free ports in a temporary CHIFFON_HOME.

The tests run in file order against one stack (starting it takes seconds, not
milliseconds); the module fixture always brings it down at the end. The commands whose
contract is checked run as `chiffon ...`; polls use `python -m chiffon.devstack`,
the same commands without importing the whole CLI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from chiffon.devstack.ports import free_ports, port_in_use

CHIFFON = Path(sys.executable).parent / "chiffon"
ROOT = Path(__file__).resolve().parents[3]
SERVICES = {"registry", "cost", "trigger", "gateway", "agent"}

pytestmark = pytest.mark.timeout(180)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run_ports(count: int) -> int:
    """A base port with ``count`` free consecutive ports (executor replicas use base+N)."""
    for _ in range(50):
        (base,) = free_ports(1)
        if base + count < 65535 and not any(port_in_use(base + n) for n in range(count)):
            return base
    raise RuntimeError("no run of free ports")


class Stack:
    def __init__(self, home: Path) -> None:
        names = [
            "NATS",
            "NATS_MONITOR",
            "POSTGRES",
            "GATEWAY",
            "REGISTRY",
            "COST",
            "TRIGGER",
            "AGENT",
            "AGENT_GRPC",
        ]
        ports = free_ports(len(names))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
        self.env.update({f"CHIFFON_{name}_PORT": str(port) for name, port in zip(names, ports)})
        self.executor_base = run_ports(4)
        self.env["CHIFFON_EXECUTOR_BASE_PORT"] = str(self.executor_base)
        self.env["CHIFFON_HOME"] = str(home)
        self.env["CHIFFON_READY_TIMEOUT"] = "90"
        self.home = home

    def run(
        self, *args: str, timeout: float = 120, light: bool = False
    ) -> subprocess.CompletedProcess[str]:
        program = [sys.executable, "-m", "chiffon.devstack"] if light else [str(CHIFFON)]
        return subprocess.run(
            [*program, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self, light: bool = True) -> list[dict[str, Any]]:
        done = self.run("status", "--json", timeout=60, light=light)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["services"]

    def services(self) -> dict[tuple[str, int], dict[str, Any]]:
        return {
            (e["name"], e["replica"]): e
            for e in self.status()
            if e["name"] not in ("nats", "postgres")
        }

    def recorded_pids(self) -> dict[tuple[str, int], int]:
        """The pids `up` recorded, read from stack.json (cheaper than another `status`)."""
        state = json.loads((self.home / "stack.json").read_text())
        records = [state["nats"], state["postgres"], *state["services"]]
        return {(r["name"], r["replica"]): r["pid"] for r in records}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("chiffon-home"))
    try:
        yield stack
    finally:
        stack.run("down", light=True)


@pytest.fixture(scope="module")
def started(stack: Stack) -> subprocess.CompletedProcess[str]:
    done = stack.run("up", "--executors", "2")
    assert done.returncode == 0, f"up failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_up_starts_every_service_healthy(
    stack: Stack, started: subprocess.CompletedProcess[str]
) -> None:
    entries = stack.status(light=False)
    services = [e for e in entries if e["name"] not in ("nats", "postgres")]
    assert {e["name"] for e in services} == SERVICES | {"executor"}
    assert sorted(e["replica"] for e in services if e["name"] == "executor") == [0, 1]
    fields = {"name", "replica", "pid", "healthy", "url"}
    assert all(set(e) == fields for e in entries if e["name"] != "trigger")
    # The trigger service's entry also says where webhooks are posted.
    (trigger,) = [e for e in entries if e["name"] == "trigger"]
    assert set(trigger) == fields | {"hooks_url"}
    assert trigger["hooks_url"] == trigger["url"].rstrip("/") + "/hooks/"
    # `up` waited for every /readyz; a status check on a busy machine may still time out
    # once, so health is polled (with a deadline) rather than sampled once.
    if not all(e["healthy"] for e in entries):
        wait_for(lambda: all(e["healthy"] for e in stack.status()), 30, "every entry healthy")
    for entry in services:
        # A real OS process per service, running that service's module.
        cmdline = " ".join(psutil.Process(entry["pid"]).cmdline())
        assert f"-m chiffon.{entry['name']}" in cmdline
    pids = {e["pid"] for e in services}
    assert len(pids) == len(services)

    # What a user needs next is printed; the admin key is private; the CLI config exists.
    assert "gateway" in started.stdout and stack.env["CHIFFON_GATEWAY_PORT"] in started.stdout
    key_file = stack.home / "admin-key"
    assert str(key_file) in started.stdout
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().startswith("chf_")
    assert "chiffon status" in started.stdout and "chiffon down" in started.stdout
    config = (stack.home / "config.toml").read_text()
    assert f"127.0.0.1:{stack.env['CHIFFON_GATEWAY_PORT']}" in config
    # Data lives in the home folder; the generated NATS config carries the settings.
    nats_conf = (stack.home / "nats" / "nats.conf").read_text()
    assert "max_payload: 8MB" in nats_conf and 'sync_interval: "2m"' in nats_conf

    # Idempotent: a second up starts nothing.
    again = stack.run("up", light=True)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout and "started " not in again.stdout
    assert stack.recorded_pids() == {(e["name"], e["replica"]): e["pid"] for e in entries}


def test_a_killed_executor_is_unhealthy_and_up_restarts_only_it(
    stack: Stack, started: object
) -> None:
    before = stack.recorded_pids()
    victim = before[("executor", 1)]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: gone(victim), 10, "the executor to die")

    def only_the_victim_unhealthy() -> dict[tuple[str, int], dict[str, Any]] | None:
        entries = stack.services()
        others = [e for key, e in entries.items() if key != ("executor", 1)]
        return entries if all(e["healthy"] for e in others) else None

    after_kill = wait_for(only_the_victim_unhealthy, 30, "the other services healthy")
    # Dead: unhealthy, with the pid as recorded (so a script sees which one died).
    assert after_kill[("executor", 1)]["pid"] == victim
    assert after_kill[("executor", 1)]["healthy"] is False
    table = stack.run("status", light=True)
    assert table.returncode == 0 and "1 of 9 unhealthy: executor-1" in table.stdout

    done = stack.run("up")
    assert done.returncode == 0, done.stderr
    assert "started executor-1" in done.stdout
    assert done.stdout.count("started ") == 1
    now = wait_for(
        lambda: (
            (entries := stack.services())
            and all(e["healthy"] for e in entries.values())
            and entries
        ),
        30,
        "every service healthy again",
    )
    assert now[("executor", 1)]["pid"] != victim
    assert {k: e["pid"] for k, e in now.items() if k != ("executor", 1)} == {
        k: pid
        for k, pid in before.items()
        if k[0] in SERVICES | {"executor"} and k != ("executor", 1)
    }


def test_a_busy_port_gives_exit_2_and_names_the_setting(stack: Stack, started: object) -> None:
    before = stack.recorded_pids()
    busy = stack.executor_base + 2  # where a third executor replica would listen
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        done = stack.run("up", "--executors", "3")
    assert done.returncode == 2
    assert f"port {busy}" in done.stderr and "CHIFFON_EXECUTOR_BASE_PORT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1
    # Checked before anything started: the stack is as it was.
    assert stack.recorded_pids() == before
    assert not any(gone(pid) for pid in before.values())


def test_down_stops_everything_and_is_idempotent(stack: Stack, started: object) -> None:
    pids = list(stack.recorded_pids().values())
    assert len(pids) == 9 and not any(gone(pid) for pid in pids)
    key = (stack.home / "admin-key").read_text()

    done = stack.run("down")
    assert done.returncode == 0, done.stderr
    assert "stopped gateway" in done.stdout and "stopped nats" in done.stdout
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    assert stack.status() == []

    again = stack.run("down", light=True)
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    # Data and the generated admin key stay for the next up.
    assert (stack.home / "postgres" / "PG_VERSION").exists()
    assert (stack.home / "nats" / "jetstream").is_dir()
    assert (stack.home / "admin-key").read_text() == key
