"""Pricing throughput of the cost service: calls priced into the spend read models per second.

    .venv/bin/python -m bench.cost_pricing [--calls 20000] [--runs 200] [--rounds 3]
                                           [--replicas 2]

A real NATS (JetStream) and PostgreSQL. Each round has its own namespace and database:
``--calls`` ``run.llm.called`` events (over ``--runs`` runs, 200 unless told, each with
its ``run.requested``; three models, cached and cache-write tokens) are appended first.
Then the cost service's own parts start in this process, as its composition root wires
them: the ``Pricer`` (the durable consumer, ``PriceBook``, ``append_many`` of the priced
events, acks) and the spend projection's runner (``cost_calls``, ``cost_runs``), set up
(the consumer made, a database connection open) as a running service is. The clock runs
from their start until every call has its row in ``cost_calls``; the time at which the
COSTS stream holds every priced event is taken too, to tell pricing from projecting.

Baselines, in the same round: NATS's CPU per message to deliver as many messages of the
same shape to a plain nats-py pull consumer (acknowledged a pull at a time, as the pricer
does), filtered as the pricer's consumer is and unfiltered: what the server spends per
call before any Chiffon code runs. And the bare projection apply rate, a rebuild of the
spend read models from the priced events already in the stream (no pricing, no appends),
in calls/s
(the stream holds ``cost.calls.priced`` events of up to 500 calls each; the events/s are
printed per round too).

The CPU spent per call while pricing is printed per process: this one (pricer and
projection), the NATS server's and PostgreSQL's (the postmaster and its backends), and
their sum, with the rate two free cores would give at that cost: on a machine shared with
other work, the wall-clock rate says more about the neighbours than the CPU does.

``--replicas N`` runs N cost replicas, as N service processes would: this one and N - 1
others started (and connected, consumer set up) before the clock starts, each with its
pricer on the shared durable consumer and its spend projection runner (they take turns
on the projection's checkpoint). The CPU figure is this process's only.

Goal (issue 18, 2 cores): >= 20,000 calls/s priced into the read models. The figure is
the median of the rounds; the benchmark never fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import time
import uuid
from typing import Any

import asyncpg
import psutil
from nats.js import api
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from bench.common import row, servers
from chiffon.core.db import create_engine, ensure_database
from chiffon.core.runtime import tune_gc
from chiffon.cost.pricing import Pricer
from chiffon.cost.projections import SpendProjection
from chiffon.cost.readmodel import cost_calls
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.runs import LlmCalled, RunRequested
from chiffon.eventstore import ANY, AggregateKey, JetStreamEventStore, wire
from chiffon.projections import ProjectionRunner
from chiffon.projections.host import all_migrations
from chiffon.spend.prices import PriceBook

CHUNK = 5000
RUNS = 200
MODELS = ("openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-haiku-4-5-20251001")
KEY = Actor(kind="api_key", id="bench-key", name="bench")
EXECUTOR = Actor.service("executor", 1)


def workload(calls: int, run_count: int = RUNS) -> list[Any]:
    runs = [f"run-{i}" for i in range(run_count)]
    events: list[Any] = [
        new_event(
            RunRequested(workflow=f"wf{i % 7}", version=1, digest="sha256:bench"),
            aggregate_id=run,
            actor=KEY,
        )
        for i, run in enumerate(runs)
    ]
    for n in range(calls):
        model = MODELS[n % len(MODELS)]
        events.append(
            new_event(
                LlmCalled(
                    node_id=f"node{n % 5}",
                    attempt=1,
                    provider=model.split("/", 1)[0],
                    model=model,
                    prompt_tokens=200 + n % 1000,
                    completion_tokens=20 + n % 100,
                    cached_read_tokens=n % 150,
                    cache_write_tokens=n % 7,
                    latency_ms=250.0,
                ),
                aggregate_id=runs[n % run_count],
                actor=EXECUTOR,
            )
        )
    return events


async def count(engine: Any) -> int:
    """Calls with their row in ``cost_calls``."""
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(cost_calls))).scalar_one())


async def counted(poll: asyncpg.Connection) -> int:
    """Calls counted in ``cost_runs`` (written in the same statement as their rows in
    ``cost_calls``): what the clock polls, a sum over the 200 runs rather than a count
    over every call, which took PostgreSQL's CPU from the pipeline it measures. On a
    connection of its own, not through SQLAlchemy: a poll through the engine took 1.8 ms
    of this process's CPU, this way 0.14 ms (200 polls each, alone, at load 6), CPU the
    figure "this process" counts against the cost service (with the same code, 60.1
    against 63.5 us per call, medians of 5 rounds: within the rounds' spread)."""
    return int(await poll.fetchval(_COUNTED))


_COUNTED = "SELECT COALESCE(SUM(calls), 0) FROM cost_runs"


class ProcessCpu:
    """CPU seconds (user and system) of a server process and its children, as they run:
    a child that comes and goes between two readings is missed (PostgreSQL's backends
    here are the pool's, open from before the first reading to after the last)."""

    def __init__(self, pid: int | None) -> None:
        self._process = psutil.Process(pid) if pid else None

    def seconds(self) -> float:
        if self._process is None:
            return 0.0
        total = 0.0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


def replica(nats_url: str, dsn: str, namespace: str, index: int, ready: Any, go: Any) -> None:
    """Another cost replica, in its own process: ready once connected, pricing on ``go``
    until ``go`` is cleared."""
    asyncio.run(run_replica(nats_url, dsn, namespace, index, ready, go))


async def run_replica(
    nats_url: str, dsn: str, namespace: str, index: int, ready: Any, go: Any
) -> None:
    tune_gc()
    engine = create_engine(dsn)
    async with JetStreamEventStore.connect(nats_url, CATALOG, namespace=namespace) as store:
        pricer = Pricer(store, PriceBook.load(), Actor.service("cost", index))
        await pricer.setup()
        runner = ProjectionRunner(store, engine, SpendProjection())
        ready.set()
        while not go.is_set():
            await asyncio.sleep(0.005)
        stopping = asyncio.Event()
        tasks = [asyncio.create_task(pricer.run(stopping)), asyncio.create_task(runner.run())]
        while go.is_set():
            await asyncio.sleep(0.02)
        stopping.set()
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await engine.dispose()


async def one_round(
    nats_url: str,
    pg_dsn: str,
    calls: int,
    replicas: int = 1,
    *,
    runs: int = RUNS,
    pull: int = 3000,
    nats: ProcessCpu | None = None,
    postgres: ProcessCpu | None = None,
) -> dict[str, float]:
    namespace = "b" + uuid.uuid4().hex[:10]
    dsn = make_url(pg_dsn).set(database=namespace).render_as_string(hide_password=False)
    await ensure_database(dsn)
    for migrations in all_migrations():
        await migrations.upgrade_async(dsn)
    engine = create_engine(dsn)
    poll = await asyncpg.connect(
        make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    async with JetStreamEventStore.connect(nats_url, CATALOG, namespace=namespace) as store:
        await store.setup()
        events = workload(calls, runs)
        for start in range(0, len(events), CHUNK):
            batch = events[start : start + CHUNK]
            results = await store.append_many(
                [(AggregateKey("run", e.aggregate_id), e, ANY) for e in batch]
            )
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise SystemExit(f"append failed: {failed[0]}")

        pricer = Pricer(store, PriceBook.load(), Actor.service("cost", 1), batch=pull)
        runner = ProjectionRunner(store, engine, SpendProjection())
        stopping = asyncio.Event()
        spawn = multiprocessing.get_context("spawn")
        go = spawn.Event()
        others = []
        for index in range(2, replicas + 1):
            ready = spawn.Event()
            process = spawn.Process(
                target=replica, args=(nats_url, dsn, namespace, index, ready, go), daemon=True
            )
            process.start()
            others.append((process, ready))
        for _process, ready in others:
            while not ready.is_set():
                await asyncio.sleep(0.01)
        go.set()
        # What a running service did once at its start: its consumer made, its
        # database connection open (a new connection and its first statements took
        # 0.1-0.3 s of a round of about 1.5 s).
        await pricer.setup()
        async with engine.connect() as conn:
            await conn.execute(select(1))
        nats = nats or ProcessCpu(None)
        postgres = postgres or ProcessCpu(None)
        nats_started, pg_started = nats.seconds(), postgres.seconds()
        cpu_started = time.process_time()
        started = time.perf_counter()
        tasks = [asyncio.create_task(pricer.run(stopping)), asyncio.create_task(runner.run())]
        priced_at = None
        try:
            while True:
                if priced_at is None and pricer.priced >= calls and replicas == 1:
                    priced_at = time.perf_counter()
                if await counted(poll) >= calls:
                    break
                await asyncio.sleep(0.02)
            done = time.perf_counter()
            cpu = time.process_time() - cpu_started
            nats_cpu = nats.seconds() - nats_started
            pg_cpu = postgres.seconds() - pg_started
        finally:
            stopping.set()
            go.clear()
            tasks[1].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for process, _ready in others:
                process.join(timeout=10)
        priced_at = priced_at or done  # with replicas, this one priced only its share

        assert await count(engine) == calls  # a row per call, each once
        stored = await store.last_sequence("COSTS")
        rebuild_started = time.perf_counter()
        await ProjectionRunner(store, engine, SpendProjection()).rebuild(workers=1)
        rebuild_seconds = time.perf_counter() - rebuild_started
        assert await count(engine) == calls
    await poll.close()
    await engine.dispose()
    return {
        "rate": calls / (done - started),
        "pricing": calls / (priced_at - started),
        "lag_ms": (done - priced_at) * 1000,
        "rebuild": calls / rebuild_seconds,
        "rebuild_events": stored / rebuild_seconds,
        "cpu_us": cpu / calls * 1e6,
        "nats_us": nats_cpu / calls * 1e6,
        "pg_us": pg_cpu / calls * 1e6,
    }


async def delivery_baseline(
    nats_url: str, calls: int, nats: ProcessCpu, runs: int = RUNS
) -> dict[str, float]:
    """NATS's CPU per message to deliver ``calls`` messages shaped like the workload's
    (a ``run.llm.called`` of about 620 bytes with its message id, 200 runs' subjects)
    to a plain nats-py pull consumer acknowledging each pull in one write, as the pricer
    does: once through a consumer filtered as the pricer's is (the run id is a token in
    the middle of the subject, ``<ns>.run.*.run.llm.called``), once unfiltered. What
    the server spends per call before any Chiffon code runs."""
    namespace = "d" + uuid.uuid4().hex[:10]
    stream = f"{namespace}_BASE"
    nc = wire.new_client()
    await nc.connect(nats_url)
    js = nc.jetstream()
    body = workload(1)[-1].model_dump_json().encode()
    try:
        await js.add_stream(name=stream, subjects=[f"{namespace}.run.>"])
        for n in range(calls):
            subject = f"{namespace}.run.run-{n % runs}.run.llm.called"
            await nc.publish(subject, body, headers={"Nats-Msg-Id": str(n)})
            if n % 1000 == 999:
                await nc.flush()
        await nc.flush()
        figures = {}
        for label, subjects in (
            ("filtered", [f"{namespace}.run.*.run.llm.called"]),
            ("unfiltered", None),
        ):
            started = nats.seconds()
            await _pull_all(nc, js, stream, label, subjects, calls)
            figures[label] = (nats.seconds() - started) / calls * 1e6
        return figures
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


async def _pull_all(
    nc: Any, js: Any, stream: str, name: str, subjects: list[str] | None, count: int
) -> None:
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name=name,
            ack_policy=api.AckPolicy.EXPLICIT,
            max_ack_pending=100_000,
            filter_subjects=subjects,
        ),
    )
    taken = 0
    while taken < count:
        want = min(3000, count - taken)
        replies: list[bytes] = []
        full = asyncio.Event()

        def on_message(
            _subject: bytes, reply: bytes, _headers: bytes | None, payload: bytes
        ) -> None:
            if payload:
                replies.append(reply)
            if len(replies) >= want or not payload:
                full.set()

        inbox = nc.new_inbox()
        subscription = await wire.raw_subscribe(nc, inbox, on_message)
        request = {"batch": want, "expires": 5_000_000_000}
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
            json.dumps(request).encode(),
            reply=inbox,
        )
        await asyncio.wait_for(full.wait(), 30)
        await wire.send_raw(nc, wire.ack_commands(replies))
        await subscription.unsubscribe()
        taken += len(replies)
    await nc.flush()


def total_us(result: dict[str, float]) -> float:
    """CPU per call of the whole pipeline: this process, NATS and PostgreSQL."""
    return result["cpu_us"] + result["nats_us"] + result["pg_us"]


async def main(args: argparse.Namespace) -> None:
    tune_gc()  # as every Chiffon service process does at start
    with servers() as srv:
        print(
            f"chiffon bench:cost pricing  ({args.calls:,} calls of {args.runs:,} runs, "
            f"{args.rounds} rounds, "
            f"{args.replicas} cost replica{'s' if args.replicas > 1 else ''}, "
            f"pulls of {args.batch:,})"
        )
        nats, postgres = ProcessCpu(srv.nats.pid), ProcessCpu(srv.postgres.pid)
        rounds = []
        for index in range(args.rounds):
            result = await one_round(
                srv.nats.url,
                srv.postgres.dsn,
                args.calls,
                args.replicas,
                runs=args.runs,
                pull=args.batch,
                nats=nats,
                postgres=postgres,
            )
            result.update(
                {
                    f"nats_{label}_us": value
                    for label, value in (
                        await delivery_baseline(srv.nats.url, args.calls, nats, args.runs)
                    ).items()
                }
            )
            rounds.append(result)
            print(
                f"  round {index + 1}: {result['rate']:,.0f} calls/s into cost_calls, "
                f"pricer alone {result['pricing']:,.0f} calls/s, "
                f"projection caught up {result['lag_ms']:,.0f} ms later, "
                f"bare projection rebuild {result['rebuild']:,.0f} calls/s "
                f"({result['rebuild_events']:,.0f} events/s); CPU per call: "
                f"this process {result['cpu_us']:,.1f} us, NATS {result['nats_us']:,.1f} us, "
                f"PostgreSQL {result['pg_us']:,.1f} us; raw nats-py delivery, NATS CPU per "
                f"message: filtered as the pricer's {result['nats_filtered_us']:,.1f} us, "
                f"unfiltered {result['nats_unfiltered_us']:,.1f} us"
            )

    def median(name: str) -> float:
        return statistics.median(r[name] for r in rounds)

    row(
        "priced into the read models (median)",
        f"{median('rate'):,.0f} calls/s",
        "(goal >= 20,000/s)",
    )
    row("  the pricer alone (appended, acked)", f"{median('pricing'):,.0f} calls/s")
    row("  CPU per call: the pricer and projection", f"{median('cpu_us'):,.1f} us")
    row("  CPU per call: NATS server", f"{median('nats_us'):,.1f} us")
    row("  CPU per call: PostgreSQL", f"{median('pg_us'):,.1f} us")
    total = statistics.median(total_us(r) for r in rounds)
    row(
        "  CPU per call: all three",
        f"{total:,.1f} us",
        f"(two free cores' ceiling {2e6 / total:,.0f} calls/s)",
    )
    row("baseline: bare projection apply (rebuild)", f"{median('rebuild'):,.0f} calls/s")
    row(
        "baseline: raw nats-py pull + ack, NATS CPU",
        f"{median('nats_filtered_us'):,.1f} us/msg",
        "(a consumer filtered as the pricer's)",
    )
    row(
        "  the same, the consumer unfiltered",
        f"{median('nats_unfiltered_us'):,.1f} us/msg",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--runs",
        type=int,
        default=RUNS,
        help="runs the calls belong to (NATS's cost per call depends on how many)",
    )
    parser.add_argument("--replicas", type=int, default=1, help="cost replicas (processes)")
    parser.add_argument(
        "--batch", type=int, default=3000, help="the pricer's pull size (the service's default)"
    )
    parser.add_argument("--quick", action="store_true", help="5,000 calls, one round")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.calls, arguments.rounds = 5_000, 1
    asyncio.run(main(arguments))
