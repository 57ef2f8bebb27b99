"""Tracing benchmark: what a node's spans cost, with an OTLP exporter configured versus none.

1. The spans alone, in this process: a node attempt's span and its model call's span
   (as ``nodes.retry`` and ``nodes.llm`` open them), CPU per node (``process_time``,
   which counts the exporter's thread too), for: the OpenTelemetry API without an SDK;
   Chiffon's default without an endpoint (the SDK recording nothing: trace ids for logs
   and events); the SDK recording with no exporter; and exporting over OTLP/HTTP to a
   local receiver that accepts and drops (another process, so its CPU is not counted),
   as Chiffon configures it (``telemetry.exporting_provider``, ``otlp.OtlpSpanExporter``)
   and, as the same-run baseline, with the SDK's own sampler and exporter. Every batch
   is flushed before the clock stops.
2. End to end, beside bare LangGraph: two executors side by side, one exporting to the
   receiver and one not, each running 10-node runs on ``chiffon/echo`` one at a time,
   taking turns round by round; CPU per node of each executor process (psutil) and
   wall time per node from the events, as ``bench:executor`` measures it. The exporter's
   cost is the rounds' paired differences (median, and mean with two standard errors).

The goal (issue 21): at most 0.1 ms per node with an exporter configured.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from bench.common import row, servers
from bench.executor import Stack, bare_langgraph, new_stack, per_node_in_chiffon
from chiffon.core import tracing
from chiffon.core.otlp import OtlpSpanExporter
from chiffon.core.runtime import tune_gc
from chiffon.core.span_recorder import RecordingTracerProvider
from chiffon.core.telemetry import exporting_provider
from chiffon.executor.models import ModelReply
from chiffon.executor.nodes.llm import answered, model_call_span

GOAL_MS = 0.1
Provider = TracerProvider | RecordingTracerProvider
REPLY = ModelReply(
    text='{"n": "x"}',
    provider="chiffon",
    model="chiffon/echo",
    prompt_tokens=12,
    completion_tokens=5,
    latency_ms=0.1,
    finish_reason="stop",
)

RECEIVER = """
import sys, time
from tests.integration.tracing.receiver import Receiver
with Receiver(keep=False).serving() as receiver:
    print(receiver.endpoint, flush=True)
    sys.stdin.read()  # until the benchmark closes it
"""


@contextmanager
def drop_receiver() -> Iterator[str]:
    """A local OTLP/HTTP receiver that accepts and drops, in a process of its own."""
    process = subprocess.Popen(
        [sys.executable, "-c", RECEIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().decode().strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)


# -- 1. the spans alone ----------------------------------------------------------------


def one_node(attempt: int) -> None:
    """The spans of one llm node's attempt, opened and ended as the executor does."""
    with (
        tracing.node_span("s1", "llm", attempt, 1),
        model_call_span("chiffon/echo", None, None) as span,
    ):
        answered(span, REPLY, "chiffon/echo", None)


def cpu_per_node(provider: Provider | None, nodes: int) -> float:
    """CPU ms per node (this process, every thread), the batch flushed at the end."""
    tracer = provider.get_tracer("chiffon") if provider is not None else None
    original = tracing.tracer
    if tracer is not None:
        tracing.tracer = tracer
    try:
        for i in range(1000):  # warm-up
            one_node(i)
        if provider is not None:
            provider.force_flush()
        started = time.process_time()
        for i in range(nodes):
            one_node(i)
        if provider is not None:
            provider.force_flush()
        return (time.process_time() - started) * 1000 / nodes
    finally:
        tracing.tracer = original


NONE = "SDK, no endpoint (the default: ids only)"
EXPORTING = "Chiffon's OTLP/HTTP exporter (as configured)"
SDK_EXPORTING = "the SDK's own OTLP/HTTP exporter"


def providers(endpoint: str) -> dict[str, Callable[[], Provider | None]]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": "chiffon-bench"})
    url = f"{endpoint}/v1/traces"
    # A queue that holds every span of a round: a span dropped when the queue is full
    # would not be encoded, and its cost not counted.
    queue = 1 << 17

    def sdk_exporting() -> TracerProvider:
        """How Chiffon exported before its own recorder and encoder: the baseline."""
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=url), max_queue_size=queue)
        )
        return provider

    return {
        "API only (no SDK)": lambda: None,
        NONE: lambda: TracerProvider(resource=resource, sampler=ALWAYS_OFF),
        "SDK recording, no exporter": lambda: TracerProvider(resource=resource),
        SDK_EXPORTING: sdk_exporting,
        EXPORTING: lambda: exporting_provider(
            resource, OtlpSpanExporter(endpoint=url), max_queue_size=queue
        ),
    }


def spans_alone(endpoint: str, nodes: int, rounds: int) -> dict[str, float]:
    """Median CPU ms per node of each configuration, taking turns round by round."""
    made = {name: make() for name, make in providers(endpoint).items()}
    samples: dict[str, list[float]] = {name: [] for name in made}
    for _ in range(rounds):
        for name, provider in made.items():
            samples[name].append(cpu_per_node(provider, nodes))
    for provider in made.values():
        if provider is not None:
            provider.shutdown()
    return {name: statistics.median(values) for name, values in samples.items()}


# -- 2. end to end ---------------------------------------------------------------------


def executor_cpu(stack: Stack) -> float:
    """CPU seconds of the stack's executor processes so far: where the spans are opened
    and exported. Their projector children are left out; they open no span, and their
    catching up at their own pace only adds noise to a round's figure."""
    total = 0.0
    for proc in stack.procs:
        try:
            times = psutil.Process(proc.pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def end_to_end(
    stacks: dict[str, Stack], nodes: int, runs: int, rounds: int
) -> dict[str, tuple[float, list[float]]]:
    """Per stack: median wall ms per node, and executor CPU ms per node of each round.

    The stacks take turns within a round, in the reverse order every other round, so
    that each round's figures are a pair measured under the same load: an executor's
    CPU per node moves by up to 1 ms from round to round on a shared machine, ten times
    what the spans cost, and only the rounds' differences show the spans."""
    wall: dict[str, list[float]] = {name: [] for name in stacks}
    cpu: dict[str, list[float]] = {name: [] for name in stacks}
    for stack in stacks.values():  # warm-up: imports, caches, the first run's work
        await per_node_in_chiffon(stack, nodes, 2)
    await asyncio.sleep(6)  # the start-up's spans (readiness probes) exported: 5 s batches
    for round_number in range(rounds):
        order = list(stacks.items())
        for name, stack in order[::-1] if round_number % 2 else order:
            before = executor_cpu(stack)
            wall[name].append(await per_node_in_chiffon(stack, nodes, runs))
            cpu[name].append((executor_cpu(stack) - before) * 1000 / ((runs + 3) * nodes))
    return {n: (statistics.median(wall[n]), cpu[n]) for n in stacks}


def paired(over: list[float], under: list[float]) -> str:
    """Median and mean (with two standard errors) of the rounds' differences."""
    differences = [a - b for a, b in zip(over, under, strict=True)]
    error = 2 * statistics.stdev(differences) / len(differences) ** 0.5
    median, mean = statistics.median(differences), statistics.mean(differences)
    return f"median {median:+.3f}, mean {mean:+.3f} ± {error:.3f} ms/node"


async def main(quick: bool) -> None:
    nodes, runs, rounds = 10, (10 if quick else 30), (3 if quick else 5)
    paired_runs, paired_rounds = (10, 20) if quick else (20, 40)
    span_nodes = 5_000 if quick else 20_000
    tune_gc()
    load = os.getloadavg()
    print("chiffon tracing benchmark (2 cores, shared; CPU time is the steadier figure)")
    print(f"  load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with drop_receiver() as endpoint:
        print(f"\n1. a node's spans alone, CPU per node (median of {rounds} rounds x {span_nodes})")
        alone = spans_alone(endpoint, span_nodes, rounds)
        for name, ms in alone.items():
            row(name, f"{ms:.4f} ms/node")
        for label, name in (("the SDK's", SDK_EXPORTING), ("Chiffon's", EXPORTING)):
            exported = alone[name] - alone[NONE]
            row(
                f"{label} exporter minus no endpoint",
                f"{exported:.4f} ms/node",
                f"goal <= {GOAL_MS} ms",
            )

        print(
            f"\n2. end to end, {nodes}-node runs on chiffon/echo one at a time"
            f" ({paired_runs} runs a round, {paired_rounds} rounds, taking turns)"
        )
        bare = await bare_langgraph(nodes, runs, with_llm=True)
        with (
            servers() as srv,
            tempfile.TemporaryDirectory(prefix="chiffon-bench-logs-") as tmp,
        ):
            logs = Path(tmp)
            stacks = {
                "no exporter": await new_stack(srv, "tracenone", logs),
                "OTLP exporter": await new_stack(srv, "traceotlp", logs),
            }
            try:
                await stacks["no exporter"].start_replicas(1)
                await stacks["OTLP exporter"].start_replicas(
                    1, {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
                )
                measured = await end_to_end(stacks, nodes, paired_runs, paired_rounds)
            finally:
                for stack in stacks.values():
                    stack.stop()
        row("bare LangGraph, same node work", f"{bare:.3f} ms/node")
        for name, (wall_ms, cpu) in measured.items():
            cpu_ms = statistics.median(cpu)
            row(f"Chiffon, {name}", f"{wall_ms:.3f} ms/node", f"executor CPU {cpu_ms:.3f} ms/node")
        row(
            "exporter minus none, executor CPU",
            paired(measured["OTLP exporter"][1], measured["no exporter"][1]),
            f"goal <= {GOAL_MS} ms",
        )
    load = os.getloadavg()
    print(f"\n  load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and rounds")
    args = parser.parse_args()
    asyncio.run(main(args.quick))
