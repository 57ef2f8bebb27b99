"""bench:events — the event store against raw nats-py, and the projection apply rate.

Everything runs against the same real NATS and PostgreSQL in the same run, side by
side, so the ratios mean something on whatever machine runs it:

    ./taskw bench:events                # 50k appends, 200k events for the projection
    ./taskw bench:events -- --events 100000 --projection-events 1000000

Goals (2 cores): batched append >= 50% of raw async publish; sync append p99 <= 1 ms;
concurrency checks cost <= 15%; projection rebuild >= 20,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import nats
from nats.js import api

from bench.common import row, servers, summary
from chiffon.cli.devstack.ports import free_port
from chiffon.core.db import create_engine, ensure_database
from chiffon.core.runtime import tune_gc
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import ANY, AggregateKey, JetStreamEventStore
from chiffon.projections import ProjectionRunner
from chiffon.projections.host import all_migrations
from chiffon.registry.projections import AgentsProjection

ACTOR = Actor.service("bench")
CHUNK = 8192  # events handed to append_many at a time (raw's max pending acks)
ROUNDS = 4  # even: checked and unchecked go first equally often


def make_event(agent_id: str) -> Any:
    return new_event(
        AgentRegistered(
            name=agent_id, host="bench-host", address="10.0.0.1:50051", capabilities=("shell",)
        ),
        aggregate_id=agent_id,
        actor=ACTOR,
    )


async def raw_async(url: str, count: int, payload: bytes) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=8192)
    stream = f"RAWBENCH{uuid.uuid4().hex[:8]}"
    await js.add_stream(
        api.StreamConfig(name=stream, subjects=[f"{stream}.>"], storage=api.StorageType.FILE)
    )
    started = time.perf_counter()
    for i in range(count):
        await js.publish_async(
            f"{stream}.a{i}.agent.registered", payload, headers={"Nats-Msg-Id": str(i)}
        )
    await js.publish_async_completed()
    elapsed = time.perf_counter() - started
    await js.delete_stream(stream)
    await nc.close()
    return count / elapsed


async def raw_sync(url: str, count: int, payload: bytes) -> list[float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        api.StreamConfig(name="RAWSYNC", subjects=["rawsync.>"], storage=api.StorageType.FILE)
    )
    samples = []
    for i in range(count):
        started = time.perf_counter()
        await js.publish(f"rawsync.a{i}.agent.registered", payload, headers={"Nats-Msg-Id": str(i)})
        samples.append((time.perf_counter() - started) * 1000)
    await js.delete_stream("RAWSYNC")
    await nc.close()
    return samples


async def store_batched(store: JetStreamEventStore, count: int, *, checked: bool) -> float:
    """Append ``count`` new aggregates' first events, pipelined; events/s.

    The events are built before the clock starts (that is the caller's work); the
    time covers what ``append_many`` does: validate, serialise, publish, await acks.
    """
    prefix = uuid.uuid4().hex[:8]
    expected = 0 if checked else ANY
    chunks = []
    for base in range(0, count, CHUNK):
        ids = [f"{prefix}-{i}" for i in range(base, min(base + CHUNK, count))]
        chunks.append([(AggregateKey("agent", a), make_event(a), expected) for a in ids])
    started = time.perf_counter()
    for batch in chunks:
        results = await store.append_many(batch)
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise SystemExit(f"append failed: {failures[0]}")
    return count / (time.perf_counter() - started)


async def store_sync(store: JetStreamEventStore, count: int) -> list[float]:
    prefix = uuid.uuid4().hex[:8]
    samples = []
    for i in range(count):
        agent_id = f"{prefix}-{i}"
        event = make_event(agent_id)
        started = time.perf_counter()
        await store.append(AggregateKey("agent", agent_id), [event], 0)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def projection_rates(
    store: JetStreamEventStore, dsn: str, nats_url: str, count: int
) -> tuple[float, float, float, int]:
    """Live: the registry service (its own process) follows while we append ``count``
    events. Rebuild: truncate and replay the whole stream in this process."""
    await ensure_database(dsn)
    for migrations in all_migrations():
        await migrations.upgrade_async(dsn)
    engine = create_engine(dsn)
    env = {
        **os.environ,
        "CHIFFON_NATS_URL": nats_url,
        "CHIFFON_DATABASE_URL": dsn,
        "CHIFFON_NAMESPACE": store.streams.namespace,
        "CHIFFON_PORT": str(free_port()),
        "CHIFFON_LOG_LEVEL": "warning",
    }
    service = subprocess.Popen([sys.executable, "-m", "chiffon.registry"], env=env)
    try:
        runner = ProjectionRunner(store, engine, AgentsProjection())
        before = await store.last_sequence("AGENTS")
        while (await runner.ensure_checkpoint())[0] < before:
            await asyncio.sleep(0.05)  # the service catches up with earlier runs first
        started = time.perf_counter()
        await store_batched(store, count, checked=False)
        appended = time.perf_counter()
        target = before + count
        while (await runner.ensure_checkpoint())[0] < target:
            await asyncio.sleep(0.005)
        done = time.perf_counter()
    finally:
        service.terminate()
        service.wait()
    try:
        total = await store.last_sequence("AGENTS")
        started_rebuild = time.perf_counter()
        await ProjectionRunner(store, engine, AgentsProjection(), batch_size=1000).rebuild()
        rebuild_rate = total / (time.perf_counter() - started_rebuild)
        return count / (done - started), (done - appended) * 1000, rebuild_rate, total
    finally:
        await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    tune_gc()  # as every Chiffon service process does at start
    with servers() as srv:
        payload = make_event("sample-agent").model_dump_json().encode()
        async with JetStreamEventStore.connect(srv.nats.url, CATALOG, namespace="bench") as store:
            await store.setup()
            print(
                f"chiffon bench:events  (event size {len(payload)} bytes, {args.events} events per run)"
            )
            print(f"append throughput, pipelined (median of {ROUNDS} rounds, taking turns)")
            rates: dict[str, list[float]] = {"raw": [], "checked": [], "unchecked": []}
            for round_ in range(ROUNDS):
                rates["raw"].append(await raw_async(srv.nats.url, args.events, payload))
                # Checked and unchecked swap places every round, so neither always
                # follows raw's burst of writes (nor always meets a longer stream).
                for checked in (True, False) if round_ % 2 == 0 else (False, True):
                    rate = await store_batched(store, args.events, checked=checked)
                    rates["checked" if checked else "unchecked"].append(rate)
            raw, checked, unchecked = (statistics.median(rates[k]) for k in rates)
            # The cost from each round's own pair: both ran within seconds of each other.
            costs = [1 - c / u for c, u in zip(rates["checked"], rates["unchecked"], strict=True)]
            cost = statistics.median(costs)
            row("raw nats-py publish_async", f"{raw:,.0f} msg/s")
            row(
                "event store append_many, checked",
                f"{checked:,.0f} events/s",
                f"{checked / raw:.0%} of raw (goal >= 50%)",
            )
            row(
                "event store append_many, no check",
                f"{unchecked:,.0f} events/s",
                f"{unchecked / raw:.0%} of raw",
            )
            row("cost of concurrency checks", f"{cost:.1%}", "(goal <= 15%)")
            row("  each round", ", ".join(f"{c:.1%}" for c in costs))

            print("append latency, one at a time")
            raw_lat = await raw_sync(srv.nats.url, args.sync, payload)
            store_lat = await store_sync(store, args.sync)
            row("raw nats-py publish (sync)", summary(raw_lat))
            row("event store append (sync, checked)", summary(store_lat), "(goal p99 <= 1 ms)")

            print(f"projection apply rate ({args.projection_events} events into PostgreSQL)")
            dsn = srv.postgres.dsn
            live, lag_ms, rebuild, total = await projection_rates(
                store, dsn, srv.nats.url, args.projection_events
            )
            row(
                "live, registry service following appends",
                f"{live:,.0f} events/s",
                f"(caught up {lag_ms:,.0f} ms after the last append)",
            )
            row(f"rebuild ({total:,} events)", f"{rebuild:,.0f} events/s", "(goal >= 20,000/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--sync", type=int, default=5_000)
    parser.add_argument("--projection-events", type=int, default=200_000)
    asyncio.run(main(parser.parse_args()))
