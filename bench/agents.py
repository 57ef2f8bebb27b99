"""Agent dispatch benchmark: executor -> agent over gRPC, on one machine.

    ./taskw bench:agents            (or: .venv/bin/python -m bench.agents [--quick])

A real agent process (``python -m chiffon.agent``, no registry) on a free port, with a key
pair generated for the run; the task is the no-op shell command ``true``.

0. Token signing: ``sign_task_token`` (parses the PEM key per call) against a
   ``TaskSigner`` holding the loaded key (what the executor's client uses).
1. Baseline, same run: a bare grpc.aio unary round trip to the agent (``Describe``).
2. One dispatch round trip of ``true`` through the executor's own client
   (``chiffon.executor.agents.client``: signed token, streamed ``Execute``), one at a
   time, p50/p99 and the ratio to the baseline; the agent's own time for the task
   (``duration_ms``: spawning ``true`` and reaping it) is printed beside it.
3. Throughput: 16 dispatches in flight through one agent (max_concurrency 16) for ~5 s,
   best of 3 rounds (on shared cores noise only slows a round), and the CPU each side
   spent per task in that round (``--profile``: cProfile of the client's side).
4. The added time of an agent node over a set node in a run: one executor replica on
   NATS/PostgreSQL, the agent registered on the AGENTS stream as a registry would, a
   one-node workflow of each kind, run one at a time, taking turns; median run duration
   (StartRun sent to run.completed heard) and the difference.

Goals (issue 17, 2 cores): dispatch p50 <= 5 ms, p99 <= 25 ms; >= 500 tasks/s. The
benchmark prints them beside the figures and never fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import percentile, row, servers, spawn_agent
from bench.executor import Driver, new_stack
from chiffon.agentproto.auth import TaskSigner, generate_keypair, sign_task_token
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.core.runtime import tune_gc
from chiffon.devstack.ports import free_port
from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.agents import AgentRegistered
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.agents.client import AgentClient, to_struct

AGENT_ID = "bench-agent"
CONCURRENCY = 16
REGISTRY = Actor.service("registry", 1)

AGENT_WORKFLOW = """
name: bench-agent-node
version: 1
inputs: {topic: {type: string}}
nodes:
  - id: noop
    type: agent
    requires: [shell]
    task: {tool: shell, command: ["true"]}
"""

SET_WORKFLOW = """
name: bench-set-node
version: 1
inputs: {topic: {type: string}}
nodes:
  - {id: noop, type: set, values: {n: "1 + 1"}}
"""


@dataclass
class Agent:
    process: subprocess.Popen[bytes]
    address: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def start_agent(root: Path, public_pem: bytes) -> Agent:
    key = root / "executor.pub"
    key.write_bytes(public_pem)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(
        {
            "CHIFFON_AGENT_ID": AGENT_ID,
            "CHIFFON_AGENT_NAME": "bench",
            "CHIFFON_AGENT_GRPC_PORT": str(port),
            "CHIFFON_EXECUTOR_PUBLIC_KEY_FILE": str(key),
            "CHIFFON_AGENT_SCRATCH_DIR": str(root / "scratch"),
            "CHIFFON_AGENT_MAX_CONCURRENCY": str(CONCURRENCY),
            "CHIFFON_LOG_FORMAT": "json",
            "CHIFFON_LOG_LEVEL": "warning",
        }
    )
    log = root / "agent.log"
    process = spawn_agent(env, log)
    agent = Agent(process, f"127.0.0.1:{port}", log)
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(agent.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the agent exited: {log.read_text(errors='replace')}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)  # type: ignore[attr-defined]  # typeshed lists no methods
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return agent
            except grpc.RpcError:
                pass
            await asyncio.sleep(0.05)
    agent.stop()
    raise RuntimeError(f"the agent did not serve in 30 s: {log.read_text(errors='replace')}")


def latency(samples_ms: list[float]) -> str:
    return f"p50 {statistics.median(samples_ms):.2f} ms  p99 {percentile(samples_ms, 99):.2f} ms"


def goal(met: bool) -> str:
    return "meets" if met else "MISSES"


def signing_cost(private_pem: bytes, calls: int) -> tuple[float, float]:
    """Microseconds per token: (sign_task_token, TaskSigner.sign)."""
    signer = TaskSigner(private_pem)
    started = time.perf_counter()
    for i in range(calls):
        sign_task_token(private_pem, agent_id=AGENT_ID, task_id=f"r:n:{i}:1")
    per_call = (time.perf_counter() - started) / calls * 1e6
    started = time.perf_counter()
    for i in range(calls):
        signer.sign(agent_id=AGENT_ID, task_id=f"r:n:{i}:1")
    held = (time.perf_counter() - started) / calls * 1e6
    return per_call, held


async def describe_round_trips(address: str, count: int) -> list[float]:
    samples = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        for i in range(count + 20):
            started = time.perf_counter()
            await stub.Describe(agent_pb2.DescribeRequest())
            if i >= 20:  # warm-up
                samples.append((time.perf_counter() - started) * 1000)
    return samples


def noop_request() -> agent_pb2.ExecuteRequest:
    run_id = uuid.uuid4().hex
    return agent_pb2.ExecuteRequest(
        task_id=f"{run_id}:noop:1:1",
        run_id=run_id,
        node_id="noop",
        attempt=1,
        tool="shell",
        arguments=to_struct({"command": ["true"]}),
        timeout_seconds=30,
    )


async def dispatch(client: AgentClient, address: str) -> tuple[float, float]:
    """One dispatch of ``true``: (round trip ms, the agent's own duration_ms)."""
    started = time.perf_counter()
    outcome = await client.execute(AGENT_ID, address, noop_request())
    elapsed = (time.perf_counter() - started) * 1000
    if not outcome.result.ok:
        raise RuntimeError(f"the task failed on the agent: {outcome.output}")
    return elapsed, outcome.result.duration_ms


async def sequential_dispatches(
    client: AgentClient, address: str, count: int
) -> tuple[list[float], list[float]]:
    trips, on_agent = [], []
    for i in range(count + 20):
        elapsed, duration = await dispatch(client, address)
        if i >= 20:
            trips.append(elapsed)
            on_agent.append(duration)
    return trips, on_agent


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """CPU time of ``process`` itself, and of its reaped children (the agent's ``true``s)."""
    times = process.cpu_times()
    return times.user + times.system, times.children_user + times.children_system


async def throughput(
    client: AgentClient, agent: Agent, seconds: float
) -> tuple[float, int, float, float, float]:
    """Tasks/s with CONCURRENCY dispatches always in flight for ``seconds``, the tasks
    done, and the CPU ms per task of the agent process, of its ``true`` children and of
    this process (the executor's client)."""
    address = agent.address
    agent_process, this = psutil.Process(agent.process.pid), psutil.Process()
    agent_before, this_before = cpu_seconds(agent_process), cpu_seconds(this)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await dispatch(client, address)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    rate = done / (time.perf_counter() - started)
    agent_after, this_after = cpu_seconds(agent_process), cpu_seconds(this)
    per_task = 1000 / max(1, done)
    agent_ms = (agent_after[0] - agent_before[0]) * per_task
    children_ms = (agent_after[1] - agent_before[1]) * per_task
    client_ms = (this_after[0] - this_before[0]) * per_task
    return rate, done, agent_ms, children_ms, client_ms


async def profile_dispatches(client: AgentClient, address: str, count: int) -> None:
    """cProfile of ``count`` sequential dispatches on the client side: the top functions."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        await dispatch(client, address)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    print(out.getvalue())


async def node_overhead(
    root: Path, agent: Agent, private_pem: bytes, runs: int
) -> tuple[float, float, int]:
    """Median ms of a run of one agent node and of one set node, and the runs timed each."""
    key = root / "executor-signing.pem"
    key.write_bytes(private_pem)
    key.chmod(0o600)
    logs = root / "logs"
    logs.mkdir()
    with servers() as srv:
        stack = await new_stack(srv, "benchagents", logs)
        async with JetStreamEventStore.connect(
            srv.nats.url, CATALOG, namespace=stack.namespace
        ) as store:
            await store.setup()
            payload = AgentRegistered(
                name="bench",
                host="127.0.0.1",
                address=agent.address,
                port=int(agent.address.rsplit(":", 1)[1]),
                capabilities=("shell",),
                max_concurrency=CONCURRENCY,
            )
            await store.append(
                AggregateKey("agent", AGENT_ID),
                [new_event(payload, aggregate_id=AGENT_ID, actor=REGISTRY)],
            )
        try:
            await stack.start_replicas(1, {"CHIFFON_AGENT_SIGNING_KEY_FILE": str(key)})
            async with Driver(stack) as driver:
                await driver.register(AGENT_WORKFLOW)
                await driver.register(SET_WORKFLOW)
                timings: dict[str, list[float]] = {"bench-agent-node": [], "bench-set-node": []}
                warm = 5
                for i in range(runs + warm):
                    for workflow, samples in timings.items():
                        started = time.perf_counter()
                        run_id = await driver.run_one(workflow, i)
                        ended = driver.ended[run_id]
                        if run_id in driver.failed:
                            raise RuntimeError(
                                f"{workflow} run failed: {driver.failed[run_id][:500]!r}"
                            )
                        if i >= warm:
                            samples.append((ended - started) * 1000)
        finally:
            stack.stop()
    agent_runs, set_runs = timings["bench-agent-node"], timings["bench-set-node"]
    return statistics.median(agent_runs), statistics.median(set_runs), len(agent_runs)


async def main(quick: bool, profile: bool) -> None:
    count = 100 if quick else 300
    seconds = 2.0 if quick else 5.0
    runs = 10 if quick else 30
    rates = 1 if quick else 3
    tune_gc()
    print("chiffon agent dispatch benchmark (2 cores; agent, executor and driver share them)")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average at start: {load} (others' work on the cores slows every figure)")
    private_pem, public_pem = generate_keypair()
    with tempfile.TemporaryDirectory(prefix="chiffon-bench-agents-") as tmp:
        root = Path(tmp)
        agent = await start_agent(root, public_pem)
        try:
            print("\n0. task token signing (per token)")
            per_call, held = signing_cost(private_pem, 500 if quick else 2000)
            row("sign_task_token (parses the PEM each call)", f"{per_call:.1f} us")
            row("TaskSigner.sign (key loaded once)", f"{held:.1f} us", "the executor's client")

            print(f"\n1. baseline: bare grpc.aio unary round trip (Describe), n={count}")
            base = await describe_round_trips(agent.address, count)
            row("Describe round trip", latency(base))

            print(f"\n2. dispatch round trip of `true` through the executor's client, n={count}")
            client = AgentClient(private_pem)
            try:
                trips, on_agent = await sequential_dispatches(client, agent.address, count)
                p50, p99 = statistics.median(trips), percentile(trips, 99)
                row("dispatch round trip", latency(trips))
                row("  of which on the agent (duration_ms)", latency(on_agent))
                row(
                    "  ratio to the Describe baseline",
                    f"p50 {p50 / statistics.median(base):.1f}x  "
                    f"p99 {p99 / percentile(base, 99):.1f}x",
                )
                row("dispatch p50", f"{p50:.2f} ms", f"goal <= 5 ms: {goal(p50 <= 5)}")
                row("dispatch p99", f"{p99:.2f} ms", f"goal <= 25 ms: {goal(p99 <= 25)}")

                print(
                    f"\n3. throughput: {CONCURRENCY} dispatches in flight through one agent "
                    f"(max_concurrency {CONCURRENCY}), rounds of {seconds:.0f} s"
                )
                rounds = [await throughput(client, agent, seconds) for _ in range(rates)]
                rate, done, agent_cpu, children_cpu, client_cpu = max(rounds)
                row(
                    "tasks/s",
                    f"{rate:,.0f} tasks/s",
                    f"goal >= 500: {goal(rate >= 500)} (best of {rates} rounds: "
                    + ", ".join(f"{r[0]:,.0f}" for r in rounds)
                    + ")",
                )
                row(
                    "  CPU per task, agent process",
                    f"{agent_cpu:.2f} ms",
                    f"(one process: {1000 / agent_cpu:,.0f} tasks/s at most)",
                )
                row("  CPU per task, the `true` it runs", f"{children_cpu:.2f} ms")
                row("  CPU per task, executor's client (this process)", f"{client_cpu:.2f} ms")
                total = agent_cpu + children_cpu + client_cpu
                row("  2 cores sustain at most", f"{2000 / total:,.0f} tasks/s", "at that cost")
                if profile:
                    print(f"\n   cProfile, client side, {count} sequential dispatches")
                    await profile_dispatches(client, agent.address, count)
            finally:
                for address in list(client._channels):
                    await client.forget(address)

            print(
                "\n4. added time of an agent node over a set node in a run "
                "(1 replica, one-node workflows, taking turns)"
            )
            agent_ms, set_ms, timed = await node_overhead(root, agent, private_pem, runs)
            row("run of one set node", f"{set_ms:.2f} ms", f"median of {timed}")
            row("run of one agent node (`true`)", f"{agent_ms:.2f} ms", f"median of {timed}")
            row("added by the agent node", f"{agent_ms - set_ms:.2f} ms")
        finally:
            agent.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke test)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile dispatches on the client side too"
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.profile))
