"""bench:gateway — the gateway end to end: runs/s through POST /v1/runs, latency from the
request to run.completed seen on SSE, GET /v1/runs/{id} requests/s, SSE fan-out.

Real processes (executor replicas, one gateway) against real NATS and PostgreSQL:

    ./taskw bench:gateway
    ./taskw bench:gateway -- --runs 600 --concurrency 48 --subscribers 1000

Goals on 2 cores: >= 100 runs/s started and completed (offline model, 3-node workflow)
with 1 and 2 executor replicas; end-to-end p50 POST -> run.completed on SSE < 50 ms;
>= 2,000 GET /v1/runs/{id} per second; p99 SSE delivery delay < 250 ms with 1,000
subscribers on one run. It prints figures and ratios; it never fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from bench.common import percentile, row, servers
from chiffon.core.db import ensure_database
from chiffon.devstack.ports import free_port
from chiffon.projections.host import all_migrations
from tests.integration.gateway.support import THREE_NODES  # the workflow the tests use

ADMIN = "chf_bench-bootstrap-admin-key-0123456789abcdef"
APPROVAL = """\
name: bench-fanout
version: 1
inputs: {goal: {type: string}}
defaults: {model: chiffon/echo}
nodes:
  - {id: wait, type: approval, message: "go?"}
  - {id: a, type: llm, prompt: "one {goal}", output: {x: string}}
  - {id: b, type: llm, prompt: "two {x}", output: {y: string}}
  - {id: c, type: llm, prompt: "three {y}", output: {z: string}}
edges:
  - {from: wait, to: a}
  - {from: a, to: b}
  - {from: b, to: c}
"""


class Proc:
    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module],
                env={**env, "CHIFFON_PORT": str(self.port), "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"{self.log.name} exited:\n{self.log.read_text()[-3000:]}")
                try:
                    if (await http.get(f"{self.url}/readyz", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise SystemExit(
            f"{self.log.name} not ready in {timeout}s:\n{self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    ratio = value / goal if higher_is_better else goal / value if value else float("inf")
    mark = "meets" if (value >= goal if higher_is_better else value <= goal) else "MISSES"
    return f"{mark} goal ({ratio:.2f}x)"


# -- a lean SSE reader (raw HTTP/1.1, chunked), so the client costs little ------------


async def sse_reader(
    port: int, path: str, on_event: Any, *, key: str = ADMIN, ready: asyncio.Event | None = None
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"SSE {path}: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    buffer = b""
    try:
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            if ready is not None and not ready.is_set():
                ready.set()
            *messages, buffer = buffer.split(b"\n\n")
            for message in messages:
                if message.startswith(b"id: "):
                    if on_event(message, time.time()) is False:
                        return
    finally:
        writer.close()


def parse(message: bytes) -> tuple[int, str, str]:
    """(seq, type, occurred_at) of one SSE message without parsing the whole JSON."""
    lines = message.split(b"\n")
    seq = int(lines[0][4:])
    event_type = lines[1][7:].decode()
    data = lines[2]
    start = data.index(b'"occurred_at":"') + 15
    return seq, event_type, data[start : data.index(b'"', start)].decode()


class RawPoster:
    """POST /v1/runs over one keep-alive HTTP/1.1 connection, without httpx: the load
    generator shares the two cores with the stack, so it must cost little."""

    def __init__(self, port: int, key: str = ADMIN) -> None:
        self.port, self.key = port, key
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def start_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self._conn is None:
            self._conn = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._conn
        data = json.dumps(body).encode()
        writer.write(
            f"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        status = int((await reader.readline()).split(b" ", 2)[1])
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, json.loads(await reader.readexactly(length))

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()


# -- scenarios --------------------------------------------------------------------------


BREAKDOWN: dict[str, list[float]] = {"post": [], "executor": [], "delivery": []}


async def run_and_wait(poster: RawPoster, port: int, topic: str) -> float:
    """POST a run, follow its SSE until run.completed; seconds from request to that event.

    Also records where the time went: the POST's answer, the executor (run.requested to
    run.completed, by the events' own timestamps), and the delivery of run.completed
    (its timestamp to its arrival on the SSE stream)."""
    started = time.perf_counter()
    status, answer = await poster.start_run({"workflow": "bench-three", "inputs": {"topic": topic}})
    posted = time.perf_counter()
    if status != 202:
        raise RuntimeError(f"POST /v1/runs: {status} {str(answer)[:300]}")
    run_id = answer["run_id"]
    done: list[float] = []
    stamps: dict[str, float] = {}

    def on_event(message: bytes, at: float) -> bool:
        _seq, event_type, occurred = parse(message)
        if event_type in ("run.requested", "run.completed"):
            stamps[event_type] = datetime.fromisoformat(occurred).timestamp()
        if event_type in ("run.completed", "run.failed"):
            if event_type == "run.failed":
                raise RuntimeError(f"run {run_id} failed: {message[:400]!r}")
            done.append(time.perf_counter())
            stamps["arrived"] = at
            return False
        return True

    await sse_reader(port, f"/v1/runs/{run_id}/events", on_event)
    BREAKDOWN["post"].append(posted - started)
    BREAKDOWN["executor"].append(stamps["run.completed"] - stamps["run.requested"])
    BREAKDOWN["delivery"].append(stamps["arrived"] - stamps["run.completed"])
    return done[0] - started


def breakdown_rows() -> None:
    parts = ", ".join(
        f"{name} {ms(statistics.median(values))}" for name, values in BREAKDOWN.items() if values
    )
    row("  where the time went (p50)", parts)
    for values in BREAKDOWN.values():
        values.clear()


async def throughput(port: int, runs: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(runs))

    async def worker() -> None:
        poster = RawPoster(port)
        try:
            for i in counter:
                latencies.append(await run_and_wait(poster, port, f"topic {i}"))
        finally:
            poster.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return runs / (time.perf_counter() - started), latencies


async def sequential(port: int, runs: int) -> list[float]:
    poster = RawPoster(port)
    try:
        return [await run_and_wait(poster, port, f"alone {i}") for i in range(runs)]
    finally:
        poster.close()


async def gets(
    port: int, run_id: str, seconds: float, concurrency: int
) -> tuple[float, list[float]]:
    """GET /v1/runs/{id} in a loop over ``concurrency`` keep-alive connections, with a raw
    HTTP/1.1 client (httpx would be the bottleneck, not the gateway)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    request = (
        f"GET /v1/runs/{run_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
    ).encode()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                status = await reader.readline()
                if b" 200 " not in status:
                    raise RuntimeError(f"GET: {status!r}")
                length = 0
                while (line := await reader.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def fanout(
    http: httpx.AsyncClient, port: int, subscribers: int
) -> tuple[list[float], int, int]:
    response = await http.post(
        "/v1/runs", json={"workflow": "bench-fanout", "inputs": {"goal": "crowd"}}
    )
    run_id = response.json()["run_id"]
    for _ in range(600):
        got = await http.get(f"/v1/runs/{run_id}")
        if got.status_code == 200 and got.json()["status"] == "waiting_approval":
            break
        await asyncio.sleep(0.05)
    delays: list[float] = []
    counts = [0] * subscribers
    approved_at: list[float] = []
    ends = [0]

    def make(i: int) -> Any:
        def on_event(message: bytes, at: float) -> bool:
            seq, event_type, occurred = parse(message)
            counts[i] += 1
            if approved_at and event_type != "run.approval.requested":
                when = datetime.fromisoformat(occurred).timestamp()
                if when >= approved_at[0] - 0.001:
                    delays.append(at - when)
            if event_type in ("run.completed", "run.failed", "run.cancelled"):
                ends[0] += 1
                return False
            return True

        return on_event

    readies = [asyncio.Event() for _ in range(subscribers)]
    tasks = []
    for i in range(subscribers):
        tasks.append(
            asyncio.create_task(
                sse_reader(port, f"/v1/runs/{run_id}/events", make(i), ready=readies[i])
            )
        )
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # do not hit the listen backlog all at once
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    # Every subscriber has the history; now the run moves and each new event fans out.
    approved_at.append(time.time())
    await http.post(f"/v1/runs/{run_id}/approvals/wait", json={"approve": True})
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return delays, ends[0], min(counts)


async def main_async(args: argparse.Namespace) -> None:
    with servers() as srv, tempfile.TemporaryDirectory(prefix="chiffon-bench-gw-") as tmp:
        logs = Path(tmp)
        dsn = (
            make_url(srv.postgres.dsn).set(database="benchgw").render_as_string(hide_password=False)
        )
        await ensure_database(dsn)
        for migrations in all_migrations():
            await migrations.upgrade_async(dsn)
        env = dict(os.environ)
        env.update(
            CHIFFON_NATS_URL=srv.nats.url,
            CHIFFON_DATABASE_URL=dsn,
            CHIFFON_NAMESPACE="benchgw",
            CHIFFON_LOG_FORMAT="json",
            CHIFFON_LOG_LEVEL="warning",
        )
        gw_env = {**env, "CHIFFON_BOOTSTRAP_ADMIN_KEY": ADMIN, "CHIFFON_RATE_LIMIT_PER_SECOND": "0"}
        procs: list[Proc] = []
        try:
            executors = [
                Proc("chiffon.executor", {**env, "CHIFFON_REPLICA": "1"}, logs / "executor-1.log")
            ]
            gateway = Proc("chiffon.gateway", gw_env, logs / "gateway.log")
            procs += [*executors, gateway]
            await asyncio.gather(*(p.ready() for p in procs))
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(
                base_url=gateway.url,
                headers={"Authorization": f"Bearer {ADMIN}"},
                limits=limits,
                timeout=60,
            ) as http:
                for source in (THREE_NODES, APPROVAL):
                    response = await http.post(
                        "/v1/workflows",
                        content=source,
                        headers={"Content-Type": "application/yaml"},
                    )
                    assert response.status_code in (200, 201), response.text
                await sequential(gateway.port, 5)  # warm up every path
                for values in BREAKDOWN.values():
                    values.clear()

                print(
                    f"\nbench:gateway  (cpus {os.cpu_count()}, {args.runs} runs x {args.concurrency} concurrent)"
                )
                alone = await sequential(gateway.port, args.latency_runs)
                p50 = statistics.median(alone)
                row(
                    "e2e POST -> run.completed on SSE, one at a time",
                    f"p50 {ms(p50)}",
                    verdict(p50 * 1000, 50, False),
                )
                row("", f"p99 {ms(percentile(alone, 99))}")
                breakdown_rows()

                for replicas in (1, 2):
                    if replicas == 2:
                        extra = Proc(
                            "chiffon.executor",
                            {**env, "CHIFFON_REPLICA": "2"},
                            logs / "executor-2.log",
                        )
                        procs.append(extra)
                        await extra.ready()
                    rate, latencies = await throughput(gateway.port, args.runs, args.concurrency)
                    row(
                        f"runs started+completed/s, {replicas} executor(s)",
                        f"{rate:.0f} runs/s",
                        verdict(rate, 100),
                    )
                    row(
                        "  e2e latency under that load",
                        f"p50 {ms(statistics.median(latencies))}",
                        f"p99 {ms(percentile(latencies, 99))}",
                    )
                    breakdown_rows()

                done = await http.get("/v1/runs", params={"status": "succeeded", "limit": 1})
                ended_id = done.json()["runs"][0]["run_id"]
                rate, latencies = await gets(
                    gateway.port, ended_id, args.seconds, args.get_concurrency
                )
                row(
                    "GET /v1/runs/{id} (ended run: cached)",
                    f"{rate:.0f} req/s",
                    verdict(rate, 2000),
                )
                row(
                    "",
                    f"p50 {ms(statistics.median(latencies))}",
                    f"p99 {ms(percentile(latencies, 99))}",
                )
                waiting = await http.post(
                    "/v1/runs", json={"workflow": "bench-fanout", "inputs": {"goal": "get"}}
                )
                live_id = waiting.json()["run_id"]
                await asyncio.sleep(0.5)
                rate, latencies = await gets(
                    gateway.port, live_id, args.seconds, args.get_concurrency
                )
                row(
                    "GET /v1/runs/{id} (live run: read model)",
                    f"{rate:.0f} req/s",
                    verdict(rate, 2000),
                )
                row(
                    "",
                    f"p50 {ms(statistics.median(latencies))}",
                    f"p99 {ms(percentile(latencies, 99))}",
                )

                delays, ended, fewest = await fanout(http, gateway.port, args.subscribers)
                if delays:
                    p99 = percentile(delays, 99)
                    row(
                        f"SSE fan-out, {args.subscribers} subscribers, 1 run",
                        f"p99 {ms(p99)}",
                        verdict(p99 * 1000, 250, False),
                    )
                    row(
                        "",
                        f"p50 {ms(statistics.median(delays))}",
                        f"max {ms(max(delays))}, {len(delays)} deliveries",
                    )
                row(
                    "  subscribers that saw the run end",
                    f"{ended}/{args.subscribers}",
                    f"fewest events seen: {fewest}",
                )
        finally:
            for proc in procs:
                proc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=400, help="runs per throughput measurement")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="clients starting and following runs"
    )
    parser.add_argument(
        "--latency-runs", type=int, default=40, help="sequential runs for the e2e latency"
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="duration of each GET measurement"
    )
    parser.add_argument("--get-concurrency", type=int, default=16)
    parser.add_argument("--subscribers", type=int, default=1000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
