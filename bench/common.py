"""Shared set-up for benchmarks: real servers in a temporary folder, timing helpers."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chiffon.devstack.ports import free_port
from chiffon.devstack.servers import NatsServer, PostgresServer


@dataclass
class Servers:
    nats: NatsServer
    postgres: PostgresServer


@contextmanager
def servers(*, postgres: bool = True) -> Iterator[Servers]:
    with tempfile.TemporaryDirectory(prefix="chiffon-bench-") as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats", port=free_port())
        nats.start()
        pg = PostgresServer(root / "postgres", port=free_port())
        try:
            if postgres:
                pg.start()
            yield Servers(nats, pg)
        finally:
            if postgres:
                pg.stop()
            nats.stop()


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(samples_ms: list[float]) -> str:
    return (
        f"p50 {statistics.median(samples_ms):.3f} ms  p99 {percentile(samples_ms, 99):.3f} ms  "
        f"max {max(samples_ms):.3f} ms"
    )


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44} {value:>22}  {note}")


def spawn_agent(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """An agent process (``python -m chiffon.agent``) with ``env``, its output to ``log``,
    in a session of its own; started once, before anything is timed."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "chiffon.agent"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
