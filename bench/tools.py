"""Agent tools benchmark: the python tool's start-to-result time for a trivial snippet, and the
files tool's per-call cost, on one machine.

    ./taskw bench:tools            (or: .venv/bin/python -m bench.tools [--quick])

1. Baseline, same run: a bare ``python -I -c pass`` spawn (and ``-I -S -c pass``) of the
   agent's own interpreter, waited for with subprocess.run.
2. The python tool, snippet ``result = 1``, start to result:
   - in process: an AgentRuntime with the tools its settings build, ``execute`` to the last
     update (argument parsing, scratch directory, spawn, fences, reaping, the answer);
   - over gRPC: a real agent process (``python -m chiffon.agent``, capabilities python and
     files) through the executor's own client (signed token, streamed ``Execute``); the
     agent's own time (``duration_ms``) beside it.
   The four are taken in turns (one sample of each per round), so others' work on the
   cores lands on all of them alike.
3. CPU per task, which others' work on the cores inflates far less than wall time: the
   bare spawns', the tool's child's (its rusage) and the agent's side in process.
4. The files tool in process: a 1 KiB write (temporary file, fsync, rename), then a read.

Goal (issue 20, 2 cores): python tool p50 <= 60 ms start to result. The benchmark prints it
beside the figures and never fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import percentile, row, spawn_agent
from chiffon.agent.application import AgentIdentity, AgentRuntime
from chiffon.agent.settings import AgentSettings
from chiffon.agent.tools.registry import build_tools
from chiffon.agentproto.auth import generate_keypair
from chiffon.agentproto.v1 import agent_pb2
from chiffon.core.runtime import tune_gc
from chiffon.devstack.ports import free_port
from chiffon.executor.agents.client import AgentClient, to_struct

AGENT_ID = "bench-tools"
SNIPPET = "result = 1"
WARM = 5


def latency(samples_ms: list[float]) -> str:
    return f"p50 {statistics.median(samples_ms):.1f} ms  p99 {percentile(samples_ms, 99):.1f} ms"


def request(tool: str, arguments: dict[str, Any]) -> agent_pb2.ExecuteRequest:
    run_id = uuid.uuid4().hex
    return agent_pb2.ExecuteRequest(
        task_id=f"{run_id}:bench:1:1",
        run_id=run_id,
        node_id="bench",
        attempt=1,
        tool=tool,
        arguments=to_struct(arguments),
        timeout_seconds=30,
    )


def agent_env(root: Path, port: int) -> dict[str, str]:
    files_root = root / "files"
    files_root.mkdir(exist_ok=True)
    return {
        "CHIFFON_AGENT_ID": AGENT_ID,
        "CHIFFON_AGENT_NAME": "bench",
        "CHIFFON_AGENT_GRPC_PORT": str(port),
        "CHIFFON_EXECUTOR_PUBLIC_KEY_FILE": str(root / "executor.pub"),
        "CHIFFON_AGENT_SCRATCH_DIR": str(root / "scratch"),
        "CHIFFON_AGENT_CAPABILITIES": "python,files",
        "CHIFFON_AGENT_FILES_ROOTS": str(files_root),
        "CHIFFON_LOG_FORMAT": "json",
        "CHIFFON_LOG_LEVEL": "warning",
    }


async def start_agent(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update(agent_env(root, port))
    log = root / "agent.log"
    process = spawn_agent(env, log)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the agent exited: {log.read_text(errors='replace')}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)  # type: ignore[attr-defined]  # typeshed lists no methods
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return process, address
            except grpc.RpcError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the agent did not serve in 30 s: {log.read_text(errors='replace')}")


def in_process_runtime(root: Path) -> AgentRuntime:
    settings = AgentSettings(
        agent_id=AGENT_ID,
        executor_public_key_file=root / "executor.pub",
        agent_scratch_dir=root / "scratch",
        agent_capabilities="python,files",
        agent_files_roots=str(root / "files"),
    )
    identity = AgentIdentity(AGENT_ID, "bench", "127.0.0.1", settings.capabilities, {})
    return AgentRuntime(
        identity,
        allow=settings.allow,
        scratch_root=root / "scratch",
        output_cap=settings.agent_output_cap_bytes,
        max_concurrency=settings.agent_max_concurrency,
        default_timeout=settings.agent_default_timeout_seconds,
        max_timeout=settings.agent_max_timeout_seconds,
        recent_results=settings.agent_recent_results,
        tools=build_tools(settings),
    )


async def in_process(runtime: AgentRuntime, tool: str, arguments: dict[str, Any]) -> float:
    """Ms from execute to the task's result, in this process."""
    started = time.perf_counter()
    task = runtime.execute(request(tool, arguments))
    if isinstance(task, agent_pb2.TaskResult):
        raise RuntimeError("a new task id was answered from the recent results")
    updates = [update async for update in task.follow()]
    elapsed = (time.perf_counter() - started) * 1000
    result = updates[-1].result
    if not result.ok:
        raise RuntimeError(f"the {tool} task failed: {result.error_type} {result.error_message}")
    return elapsed


async def over_grpc(client: AgentClient, address: str) -> tuple[float, float]:
    """(ms from the call to the result over gRPC, the agent's own duration_ms)."""
    started = time.perf_counter()
    outcome = await client.execute(AGENT_ID, address, request("python", {"code": SNIPPET}))
    elapsed = (time.perf_counter() - started) * 1000
    if not outcome.result.ok:
        raise RuntimeError(f"the python task failed: {outcome.result.error_message}")
    return elapsed, outcome.result.duration_ms


def bare_spawn(*flags: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)
    return (time.perf_counter() - started) * 1000


def cpu_ms(who: int) -> float:
    usage = resource.getrusage(who)
    return (usage.ru_utime + usage.ru_stime) * 1000


async def cpu_per_task(root: Path, count: int) -> None:
    """CPU ms per task (less sensitive than wall time to others' work on the cores): the
    bare spawns' (reaped children), the tool's child (its rusage, as the task reports it)
    and this process's own share of a task in process (the agent's side)."""
    runtime = in_process_runtime(root)
    children: dict[str, list[float]] = {"-I": [], "-I -S": []}
    tool_child, agent_side = [], []
    try:
        for _ in range(count):
            for flags in children:
                before = cpu_ms(resource.RUSAGE_CHILDREN)
                await asyncio.to_thread(bare_spawn, *flags.split())
                children[flags].append(cpu_ms(resource.RUSAGE_CHILDREN) - before)
            before = cpu_ms(resource.RUSAGE_SELF)
            task = runtime.execute(request("python", {"code": SNIPPET}))
            assert not isinstance(task, agent_pb2.TaskResult)
            updates = [update async for update in task.follow()]
            agent_side.append(cpu_ms(resource.RUSAGE_SELF) - before)
            tool_child.append(updates[-1].result.cpu_seconds * 1000)
    finally:
        await runtime.close()
    for flags, samples in children.items():
        row(f"bare `python {flags} -c pass`", f"{statistics.median(samples):.1f} ms CPU")
    row("python tool: the runner, guard and snippet", f"{statistics.median(tool_child):.1f} ms CPU")
    row("python tool: the agent's side, in process", f"{statistics.median(agent_side):.1f} ms CPU")


async def python_tool(root: Path, private_pem: bytes, count: int) -> None:
    runtime = in_process_runtime(root)
    process, address = await start_agent(root)
    client = AgentClient(private_pem)
    samples: dict[str, list[float]] = {
        "bare": [],
        "bare_s": [],
        "in_process": [],
        "grpc": [],
        "on_agent": [],
    }
    turns: list[tuple[str, Callable[[], Coroutine[Any, Any, float]]]] = [
        ("bare", lambda: asyncio.to_thread(bare_spawn, "-I")),
        ("bare_s", lambda: asyncio.to_thread(bare_spawn, "-I", "-S")),
        ("in_process", lambda: in_process(runtime, "python", {"code": SNIPPET})),
    ]
    try:
        for i in range(count + WARM):
            for name, call in turns:
                elapsed = await call()
                if i >= WARM:
                    samples[name].append(elapsed)
            elapsed, on_agent = await over_grpc(client, address)
            if i >= WARM:
                samples["grpc"].append(elapsed)
                samples["on_agent"].append(on_agent)
    finally:
        for channel_address in list(client._channels):
            await client.forget(channel_address)
        await runtime.close()
        process.terminate()
        process.wait(10)
    bare, tool = samples["bare"], samples["grpc"]
    row("bare `python -I -c pass` spawn", latency(bare), "baseline")
    row("bare `python -I -S -c pass` spawn", latency(samples["bare_s"]))
    row("python tool, in process (AgentRuntime)", latency(samples["in_process"]))
    row("python tool, over gRPC (executor's client)", latency(tool))
    row("  of which on the agent (duration_ms)", latency(samples["on_agent"]))
    row(
        "  ratio to the bare -I spawn",
        f"p50 {statistics.median(tool) / statistics.median(bare):.2f}x",
    )
    p50 = statistics.median(tool)
    met = "meets" if p50 <= 60 else "MISSES"
    row("python tool p50 over gRPC", f"{p50:.1f} ms", f"goal <= 60 ms: {met}")


async def files_tool(root: Path, count: int) -> None:
    runtime = in_process_runtime(root)
    content = "x" * 1024
    writes, reads = [], []
    try:
        for i in range(count + WARM):
            write = await in_process(
                runtime, "files", {"action": "write", "path": "bench.txt", "content": content}
            )
            read = await in_process(runtime, "files", {"action": "read", "path": "bench.txt"})
            if i >= WARM:
                writes.append(write)
                reads.append(read)
    finally:
        await runtime.close()
    row("files write of 1 KiB (fsync, rename)", latency(writes))
    row("files read of 1 KiB", latency(reads))


async def main(quick: bool) -> None:
    count = 30 if quick else 100
    tune_gc()
    print("chiffon agent tools benchmark (2 cores; the agent and this driver share them)")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average at start: {load} (others' work on the cores slows every figure)")
    private_pem, public_pem = generate_keypair()
    with tempfile.TemporaryDirectory(prefix="chiffon-bench-tools-") as tmp:
        root = Path(tmp)
        (root / "executor.pub").write_bytes(public_pem)
        print(f"\n1-2. python tool, `{SNIPPET}`, start to result, in turns, n={count}")
        await python_tool(root, private_pem, count)
        print(f"\n3. CPU per task (median), n={count}")
        await cpu_per_task(root, count)
        print(f"\n4. files tool in process, n={count}")
        await files_tool(root, count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke test)")
    args = parser.parse_args()
    asyncio.run(main(args.quick))
