"""bench:triggers — webhook ingestion: verified, deduplicated, durably stored deliveries
per second through ``POST /hooks/{trigger}``, and p50/p99 from request to the 202.

A real trigger service process against real NATS and PostgreSQL; 32 senders on raw
HTTP/1.1 keep-alive connections (a lean client, so the measure is the service's, not
httpx's), each delivery a distinct Standard Webhooks message signed beforehand. The
202 means the delivery is stored (appended to JetStream, file storage). The service's
dispatcher requests each delivery's run meanwhile: ``StartRun`` is answered at once by
a stand-in in this process (the executor's own cost is bench:gateway's), so the
service does all of its own work per delivery (store it; request its run; record it).

Baselines in the same run, with the same 32-way concurrency: the service's
``/healthz`` (its HTTP stack alone) and bare JetStream publishes of a delivery-sized
message (the store alone).

    ./taskw bench:triggers
    ./taskw bench:triggers -- --quick

Goals on 2 cores: >= 2,000 deliveries/s, p99 <= 25 ms. Median of 3 rounds. It prints
figures; it never fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import psutil
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from standardwebhooks import Webhook

from bench.common import percentile, row, servers
from chiffon.commands import CommandBus, StartRun
from chiffon.commands.model import run_id_for
from chiffon.commands.triggers import CreateTrigger
from chiffon.core.db import ensure_database
from chiffon.devstack.ports import free_port
from chiffon.events import CATALOG, Actor
from chiffon.eventstore import JetStreamEventStore
from chiffon.projections.host import all_migrations
from chiffon.trigger.deliveries import CONSUMER

NAMESPACE = "benchtrg"
SECRET = "whsec_" + base64.b64encode(b"bench-trigger-secret-24by").decode()
ADMIN = Actor(kind="api_key", id="bench", name="bench")
SENDERS = 32


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

    def cpu(self) -> float:
        """CPU seconds the process has used so far (user + system)."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def body_of(index: int) -> bytes:
    """A GitHub-issue-sized delivery (about 1 KiB)."""
    return json.dumps(
        {
            "action": "opened",
            "issue": {
                "number": index,
                "title": f"Something is broken ({index})",
                "body": "Steps to reproduce: " + "lorem ipsum " * 60,
                "labels": ["bug", "triage"],
            },
            "repository": {"full_name": "chiffon/chiffon"},
        }
    ).encode()


def requests(trigger: str, prefix: str, count: int) -> list[bytes]:
    """``count`` signed deliveries as raw HTTP/1.1 requests, made before the clock runs."""
    webhook = Webhook(SECRET)
    made = []
    for index in range(count):
        body = body_of(index)
        msg_id = f"{prefix}-{index}"
        at = datetime.now(UTC)
        head = (
            f"POST /hooks/{trigger} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"webhook-id: {msg_id}\r\nwebhook-timestamp: {int(at.timestamp())}\r\n"
            f"webhook-signature: {webhook.sign(msg_id, at, body)}\r\n\r\n"
        )
        made.append(head.encode() + body)
    return made


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def blast(
    ports: Sequence[int], payloads: Sequence[bytes], senders: int = SENDERS
) -> tuple[float, list[float], dict[int, int]]:
    """Send every request over ``senders`` keep-alive connections; (seconds, latencies
    in ms, count per status)."""
    queue = list(reversed(payloads))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connections = [
        await asyncio.open_connection("127.0.0.1", ports[index % len(ports)])
        for index in range(senders)
    ]

    async def sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(sender(r, w) for r, w in connections))
    elapsed = time.perf_counter() - began
    for _, writer in connections:
        writer.close()
    return elapsed, latencies, statuses


async def publish_baseline(url: str, count: int, size: int) -> tuple[float, list[float]]:
    """Bare JetStream publishes (file storage, acknowledged), 32 at a time."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = "BENCH_BASELINE"
    await js.add_stream(name=stream, subjects=["benchbase.>"], storage="file")
    data = b"x" * size
    latencies: list[float] = []
    remaining = list(range(count))

    async def publisher() -> None:
        while remaining:
            index = remaining.pop()
            started = time.perf_counter()
            await js.publish(f"benchbase.d{index}", data, headers={"Nats-Msg-Id": f"m{index}"})
            latencies.append((time.perf_counter() - started) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(SENDERS)))
    elapsed = time.perf_counter() - began
    await js.delete_stream(stream)
    await nc.close()
    return elapsed, latencies


async def stand_in_executor(store: JetStreamEventStore) -> object:
    """Answers ``StartRun`` at once with the run id the executor would give."""
    bus = CommandBus(store, NAMESPACE)

    async def start(command: StartRun) -> dict[str, object]:
        key = command.idempotency_key or ""
        run_id = run_id_for(command.actor.kind, command.actor.id, key)
        return {
            "run_id": run_id,
            "workflow": command.workflow,
            "version": 1,
            "status": "pending",
            "created": True,
        }

    return await bus.serve(StartRun, start)


def figure(
    label: str, rates: list[float], p50s: list[float], p99s: list[float], note: str = ""
) -> None:
    row(
        label,
        f"{statistics.median(rates):,.0f}/s",
        f"p50 {statistics.median(p50s):.1f} ms  p99 {statistics.median(p99s):.1f} ms  "
        f"(rounds: {', '.join(f'{r:,.0f}' for r in rates)}) {note}",
    )


async def main_async(args: argparse.Namespace) -> None:
    count = 1500 if args.quick else args.deliveries
    rounds = args.rounds
    with servers() as srv, tempfile.TemporaryDirectory(prefix="chiffon-bench-trg-") as tmp:
        logs = Path(tmp)
        dsn = (
            make_url(srv.postgres.dsn).set(database=NAMESPACE).render_as_string(hide_password=False)
        )
        await ensure_database(dsn)
        for migrations in all_migrations():
            await migrations.upgrade_async(dsn)
        env = dict(os.environ)
        env.update(
            CHIFFON_NATS_URL=srv.nats.url,
            CHIFFON_DATABASE_URL=dsn,
            CHIFFON_NAMESPACE=NAMESPACE,
            CHIFFON_LOG_FORMAT="json",
            CHIFFON_LOG_LEVEL="warning",
            CHIFFON_TRIGGER_SECRETS_KEY=Fernet.generate_key().decode(),
        )
        replicas = [
            Proc("chiffon.trigger", {**env, "CHIFFON_REPLICA": str(n)}, logs / f"trigger-{n}.log")
            for n in range(1, args.replicas + 1)
        ]
        ports = [proc.port for proc in replicas]

        def cpu() -> float:
            return sum(proc.cpu() for proc in replicas)

        try:
            await asyncio.gather(*(proc.ready() for proc in replicas))
            async with JetStreamEventStore.connect(
                srv.nats.url, CATALOG, namespace=NAMESPACE
            ) as store:
                served = await stand_in_executor(store)
                bus = CommandBus(store, NAMESPACE)
                await bus.send(
                    CreateTrigger(
                        actor=ADMIN,
                        trigger="bench",
                        workflow="triage",
                        scheme="standard-webhooks",
                        secrets=[SECRET],
                        inputs={"title": "/issue/title", "number": "/issue/number"},
                    )
                )
                print(
                    f"\nbench:triggers  (cpus {os.cpu_count()}, {count} deliveries x {rounds} rounds, {SENDERS} senders, {args.replicas} trigger replica(s))"
                )
                _, _, warm = await blast(ports, requests("bench", "warm", 300))
                assert set(warm) == {202}, warm
                health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                rates, p50s, p99s, cpus, health_cpus = [], [], [], [], []
                sustained: list[float] = []
                base_rates, base_p50, base_p99 = [], [], []
                js_rates, js_p50, js_p99 = [], [], []
                for round_ in range(rounds):
                    payloads = requests("bench", f"r{round_}", count)
                    used = cpu()
                    began = time.perf_counter()
                    elapsed, latencies, statuses = await blast(ports, payloads)
                    await drain(store)  # the dispatcher's share of the work counts too
                    sustained.append(count / (time.perf_counter() - began))
                    cpus.append((cpu() - used) / count * 1e6)
                    if set(statuses) != {202}:
                        raise SystemExit(
                            f"unexpected answers: {statuses}\n{replicas[0].log.read_text()[-2000:]}"
                        )
                    rates.append(count / elapsed)
                    p50s.append(statistics.median(latencies))
                    p99s.append(percentile(latencies, 99))
                    used = cpu()
                    elapsed, latencies, statuses = await blast(ports, [health] * count)
                    health_cpus.append((cpu() - used) / count * 1e6)
                    base_rates.append(count / elapsed)
                    base_p50.append(statistics.median(latencies))
                    base_p99.append(percentile(latencies, 99))
                    elapsed, latencies = await publish_baseline(srv.nats.url, count, 1500)
                    js_rates.append(count / elapsed)
                    js_p50.append(statistics.median(latencies))
                    js_p99.append(percentile(latencies, 99))
                figure("deliveries (POST /hooks, 202 stored)", rates, p50s, p99s)
                row(
                    "  ... and every run requested (sustained)",
                    f"{statistics.median(sustained):,.0f}/s",
                    "(until the dispatcher has requested and recorded every run)",
                )
                row(
                    "  service CPU per delivery (incl. dispatch)",
                    f"{statistics.median(cpus):,.0f} us",
                    f"(a core's worth: {1e6 / statistics.median(cpus):,.0f} deliveries/s)",
                )
                figure("baseline: GET /healthz, same service", base_rates, base_p50, base_p99)
                row("  service CPU per /healthz", f"{statistics.median(health_cpus):,.0f} us")
                figure("baseline: bare JetStream publish, 1.5 KB", js_rates, js_p50, js_p99)
                rate, p99 = statistics.median(rates), statistics.median(p99s)
                print(
                    f"  goals: >= 2,000 deliveries/s: {'meets' if rate >= 2000 else 'MISSES'} "
                    f"({rate / 2000:.2f}x); p99 <= 25 ms: {'meets' if p99 <= 25 else 'MISSES'}"
                )
                await served.unsubscribe()  # type: ignore[attr-defined]
        finally:
            for proc in replicas:
                proc.stop()


async def drain(store: JetStreamEventStore, timeout: float = 120) -> None:
    """Wait until the dispatcher has requested (and recorded) every delivery's run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await store.js.consumer_info(store.streams.stream_name("TRIGGERS"), CONSUMER)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.2)
    print("  (the dispatcher had not caught up within the timeout)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=6000, help="deliveries per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="trigger service processes (senders spread over them)",
    )
    parser.add_argument("--quick", action="store_true", help="1,500 deliveries per round")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
