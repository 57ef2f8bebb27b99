"""bench:events — the event store against raw nats-py, and the projection apply rate.

Everything runs against the same real NATS and PostgreSQL in the same run, side by
side, so the ratios mean something on whatever machine runs it:

    ./taskw bench:events      # 150k appends each way (raw, checked, unchecked);
                              # 200k events for the projection
    ./taskw bench:events -- --events 300000 --projection-events 1000000
    ./taskw bench:events -- --nats-nodes 3   # and R3 streams on a 3-node cluster

Goals (2 cores): batched append >= 50% of raw async publish; sync append p99 <= 1 ms;
concurrency checks cost <= 15%; projection rebuild >= 20,000 events/s. With
--nats-nodes 3: appends pause under 2 s when a node is killed, and no acknowledged
event is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.js import api

from bench.common import row, servers, summary
from chiffon.core.db import create_engine, ensure_database
from chiffon.core.runtime import tune_gc
from chiffon.devstack.cluster import NatsCluster
from chiffon.devstack.ports import free_port
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import ANY, AggregateKey, EventStoreError, JetStreamEventStore
from chiffon.projections import ProjectionRunner
from chiffon.projections.host import all_migrations
from chiffon.registry.projections import AgentsProjection

ACTOR = Actor.service("bench")
CHUNK = 8192  # events handed to append_many at a time (raw's max pending acks)


def make_event(agent_id: str) -> Any:
    return new_event(
        AgentRegistered(
            name=agent_id, host="bench-host", address="10.0.0.1:50051", capabilities=("shell",)
        ),
        aggregate_id=agent_id,
        actor=ACTOR,
    )


class RawPublisher:
    """nats-py's own JetStream publishing, into a stream like the event store's."""

    def __init__(self, url: str, payload: bytes) -> None:
        self.url, self.payload = url, payload
        self.sent = 0

    async def __aenter__(self) -> RawPublisher:
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream(publish_async_max_pending=CHUNK)
        self.stream = f"RAWBENCH{uuid.uuid4().hex[:8]}"
        await self.js.add_stream(
            api.StreamConfig(
                name=self.stream, subjects=[f"{self.stream}.>"], storage=api.StorageType.FILE
            )
        )
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.js.delete_stream(self.stream)
        await self.nc.close()

    def _next(self) -> tuple[str, dict[str, str]]:
        self.sent += 1
        subject = f"{self.stream}.a{self.sent}.agent.registered"
        return subject, {"Nats-Msg-Id": str(self.sent)}

    async def pipelined(self, count: int) -> float:
        """Seconds to publish ``count`` messages with ``publish_async`` and see every ack."""
        started = time.perf_counter()
        for _ in range(count):
            subject, headers = self._next()
            await self.js.publish_async(subject, self.payload, headers=headers)
        await self.js.publish_async_completed()
        return time.perf_counter() - started

    async def one(self) -> float:
        """Milliseconds for one ``publish``, ack included."""
        subject, headers = self._next()
        started = time.perf_counter()
        await self.js.publish(subject, self.payload, headers=headers)
        return (time.perf_counter() - started) * 1000


async def store_batched(store: JetStreamEventStore, count: int, *, checked: bool) -> float:
    """Append ``count`` new aggregates' first events, pipelined; events/s."""
    return count / await store_pipelined(store, count, checked=checked)


async def store_pipelined(store: JetStreamEventStore, count: int, *, checked: bool) -> float:
    """Seconds to append ``count`` new aggregates' first events with ``append_many``.

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
    return time.perf_counter() - started


async def store_one(store: JetStreamEventStore) -> float:
    """Milliseconds for one checked ``append`` of a new aggregate's first event."""
    agent_id = uuid.uuid4().hex
    event = make_event(agent_id)
    started = time.perf_counter()
    await store.append(AggregateKey("agent", agent_id), [event], 0)
    return (time.perf_counter() - started) * 1000


async def pipelined_rates(
    raw: RawPublisher, store: JetStreamEventStore, events: int
) -> tuple[dict[str, float], list[float]]:
    """Events/s of raw, checked and unchecked pipelined publishing, and the cost of the
    checks in each cycle.

    The three take turns a chunk (8,192 events, a fraction of a second) at a time, in
    an order that rotates every cycle: on cores whose speed drifts within seconds, each
    meets the same moments of the machine, and none always goes first or last."""
    modes: dict[str, Callable[[], Awaitable[float]]] = {
        "raw": lambda: raw.pipelined(CHUNK),
        "checked": lambda: store_pipelined(store, CHUNK, checked=True),
        "unchecked": lambda: store_pipelined(store, CHUNK, checked=False),
    }
    cycles = -(-events // CHUNK)
    cycles += -cycles % len(modes)  # every mode in every place equally often
    seconds = dict.fromkeys(modes, 0.0)
    costs = []
    names = list(modes)
    for cycle in range(cycles):
        took = {}
        for name in names[cycle % 3 :] + names[: cycle % 3]:
            took[name] = await modes[name]()
            seconds[name] += took[name]
        costs.append(1 - took["unchecked"] / took["checked"])
    return {name: cycles * CHUNK / s for name, s in seconds.items()}, costs


async def sync_latencies(
    raw: RawPublisher, store: JetStreamEventStore, count: int
) -> tuple[list[float], list[float]]:
    """``count`` one-at-a-time publishes and appends, alternating (which goes first too)."""
    raw_ms: list[float] = []
    store_ms: list[float] = []
    for i in range(count):
        if i % 2:
            raw_ms.append(await raw.one())
            store_ms.append(await store_one(store))
        else:
            store_ms.append(await store_one(store))
            raw_ms.append(await raw.one())
    return raw_ms, store_ms


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


# -- a cluster beside the single server ---------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes so far."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def cluster_rates(
    single: JetStreamEventStore,
    single_pids: list[int],
    cluster: JetStreamEventStore,
    cluster_pids: list[int],
    events: int,
) -> dict[str, tuple[float, float, float]]:
    """Checked pipelined appends, the single server's R1 and the cluster's Rn taking
    turns a chunk at a time: events/s, server CPU and client CPU (us per event)."""
    targets = {"R1": (single, single_pids), "Rn": (cluster, cluster_pids)}
    seconds = dict.fromkeys(targets, 0.0)
    server_cpu = dict.fromkeys(targets, 0.0)
    client_cpu = dict.fromkeys(targets, 0.0)
    cycles = max(2, -(-events // CHUNK))
    cycles += cycles % 2
    names = list(targets)
    for cycle in range(cycles):
        for name in names[cycle % 2 :] + names[: cycle % 2]:
            store, pids = targets[name]
            servers_before, client_before = cpu_seconds(pids), time.process_time()
            seconds[name] += await store_pipelined(store, CHUNK, checked=True)
            server_cpu[name] += cpu_seconds(pids) - servers_before
            client_cpu[name] += time.process_time() - client_before
    count = cycles * CHUNK
    return {
        name: (
            count / seconds[name],
            server_cpu[name] / count * 1e6,
            client_cpu[name] / count * 1e6,
        )
        for name in names
    }


async def appends_through_a_kill(
    store: JetStreamEventStore, kill: Callable[[], object], after: float = 1.0
) -> tuple[float, dict[str, int], int]:
    """Checked appends one at a time while ``kill`` takes a node away: the gap between
    the last ack before and the first after (s), every ack (aggregate -> sequence) and
    the appends that raised (not acknowledged). Stops ``after`` s past the first ack
    after the kill, or 30 s after the kill."""
    acked: dict[str, int] = {}
    times: list[float] = []
    failed = 0
    killed_at: float | None = None
    prefix = uuid.uuid4().hex[:8]
    n = 0
    while True:
        now = time.perf_counter()
        if killed_at is None and len(acked) >= 200:
            await asyncio.to_thread(kill)  # the loop keeps serving acks meanwhile
            killed_at = time.perf_counter()
        if killed_at is not None:
            later = [t for t in times if t > killed_at]
            if (later and now - later[0] > after) or now - killed_at > 30:
                break
        agent_id = f"{prefix}-{n}"
        n += 1
        try:
            result = await store.append(AggregateKey("agent", agent_id), [make_event(agent_id)], 0)
        except EventStoreError:
            failed += 1
            continue
        acked[agent_id] = result.sequences[0]
        times.append(time.perf_counter())
    assert killed_at is not None
    before = max((t for t in times if t <= killed_at), default=killed_at)
    after_kill = [t for t in times if t > killed_at]
    pause = (after_kill[0] - before) if after_kill else float("inf")
    return pause, acked, failed


async def lost_events(store: JetStreamEventStore, acked: dict[str, int]) -> int:
    """Acknowledged events not found at the sequence their ack named."""
    lost = 0
    for agent_id, sequence in acked.items():
        events, _ = await store.read_aggregate(AggregateKey("agent", agent_id))
        lost += [e.sequence for e in events] != [sequence]
    return lost


async def stream_leader(store: JetStreamEventStore, stream: str) -> int:
    """The number of the node leading ``stream`` (server names end in -<n>)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            info = await store.js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return int(info.cluster.leader.rsplit("-", 1)[1])
        except Exception:  # noqa: BLE001 — an election under way
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{stream} has no leader after 30 s")


async def cluster_comparison(
    single: JetStreamEventStore, single_pid: int | None, args: argparse.Namespace
) -> None:
    nodes = args.nats_nodes
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as root:
        cluster = NatsCluster.on_free_ports(Path(root), nodes).start()
        try:
            async with JetStreamEventStore.connect(
                cluster.url, CATALOG, namespace="benchr"
            ) as store:
                await store.setup(replicas=nodes)
                pids = [node.pid for node in cluster.nodes if node.pid]
                print(
                    f"R{nodes} streams on a {nodes}-node cluster beside the single server's R1"
                    " (checked appends, taking turns)"
                )
                rates = await cluster_rates(single, [single_pid or 0], store, pids, args.events)
                for name, label in (("R1", "single server, R1"), ("Rn", f"cluster, R{nodes}")):
                    rate, server_us, client_us = rates[name]
                    row(
                        f"append_many, {label}",
                        f"{rate:,.0f} events/s",
                        f"NATS CPU {server_us:.1f} us/event, client {client_us:.1f} us/event",
                    )
                one_ms: list[float] = []
                r1_ms: list[float] = []
                for i in range(args.sync):
                    for target in (store, single) if i % 2 else (single, store):
                        (one_ms if target is store else r1_ms).append(await store_one(target))
                row("append (sync), single server, R1", summary(r1_ms))
                row(f"append (sync), cluster, R{nodes}", summary(one_ms))

                stream = store.streams.stream_name("AGENTS")
                print(
                    f"a node lost during one-at-a-time appends ({args.kills} times each;"
                    " goal: pause < 2 s, nothing acknowledged lost)"
                )
                cases = (
                    ("SIGKILL the stream's leader", True, "kill"),
                    ("SIGKILL another node", False, "kill"),
                    ("stop (SIGTERM) the stream's leader", True, "stop"),
                )
                for label, leads, how in cases:
                    pauses, lost, acked_total, failed_total = [], 0, 0, 0
                    for _ in range(args.kills):
                        leader = await stream_leader(store, stream)
                        victim = leader if leads else (leader + 1) % nodes
                        pause, acked, failed = await appends_through_a_kill(
                            store, getattr(cluster.nodes[victim], how)
                        )
                        cluster.nodes[victim].start()
                        cluster.wait_healthy(60)
                        lost += await lost_events(store, acked)
                        pauses.append(pause)
                        acked_total += len(acked)
                        failed_total += failed
                    row(
                        label,
                        f"pause median {statistics.median(pauses):.2f} s, max {max(pauses):.2f} s",
                        f"{acked_total:,} acked, {lost} lost, {failed_total} refused",
                    )
                for name in store.streams.all_stream_names():
                    await store.js.delete_stream(name)
        finally:
            cluster.stop()


async def main(args: argparse.Namespace) -> None:
    tune_gc()  # as every Chiffon service process does at start
    with servers() as srv:
        payload = make_event("sample-agent").model_dump_json().encode()
        async with JetStreamEventStore.connect(srv.nats.url, CATALOG, namespace="bench") as store:
            await store.setup()
            print(f"chiffon bench:events  (event size {len(payload)} bytes)")
            async with RawPublisher(srv.nats.url, payload) as raw_publisher:
                rates, costs = await pipelined_rates(raw_publisher, store, args.events)
                print(
                    f"append throughput, pipelined ({len(costs) * CHUNK:,} events each:"
                    " raw, checked and unchecked taking turns)"
                )
                raw, checked, unchecked = rates["raw"], rates["checked"], rates["unchecked"]
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
                cost = 1 - checked / unchecked
                row("cost of concurrency checks", f"{cost:.1%}", "(goal <= 15%)")
                quartiles = statistics.quantiles(costs, n=4)
                row(
                    f"  in each of {len(costs)} cycles",
                    f"median {statistics.median(costs):.1%}",
                    f"middle half {quartiles[0]:.1%} to {quartiles[2]:.1%}",
                )

                print("append latency, one at a time (raw and checked taking turns)")
                raw_lat, store_lat = await sync_latencies(raw_publisher, store, args.sync)
            row("raw nats-py publish (sync)", summary(raw_lat))
            row("event store append (sync, checked)", summary(store_lat), "(goal p99 <= 1 ms)")

            if args.projection_events > 0:
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

            if args.nats_nodes > 1:
                await cluster_comparison(store, srv.nats.pid, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--sync", type=int, default=5_000)
    parser.add_argument(
        "--projection-events", type=int, default=200_000, help="0 skips the projection"
    )
    parser.add_argument(
        "--nats-nodes",
        type=int,
        default=1,
        choices=range(1, 6),
        help="also compare R<n> streams on an n-node cluster with the single server, "
        "and kill nodes while appending",
    )
    parser.add_argument("--kills", type=int, default=3, help="node kills per kind (leader, other)")
    asyncio.run(main(parser.parse_args()))
