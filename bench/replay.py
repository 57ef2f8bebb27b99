"""bench:replay — ``chiffon replay --verify`` speed over stored runs, beside reading the
same runs' events alone.

One run of each in-process shape (a linear chain, a loop with a condition, a loop that
ends early, a fan-out joined into an approval rejected once) is executed for real once
against a real NATS; then copies of them under fresh run ids are appended directly, up
to ``--runs``. Both sides then go over the same runs with the same processes (one per
core by default, each with its own connection):

- read: each run's events read in one pass over the stream and indexed
  (``RunSource.runs``, as verify reads them), nothing replayed; beside it, the same runs
  read one by one (``RunSource.run``, a lookup per run), as a single-run replay reads;
- verify: the same pass, and each run re-driven through the executor's engine and compared
  (the graph stepped by the replay, ``replay.steps``); beside it, the same with the graph
  stepped by LangGraph's own loop (``--through-langgraph``).

Reported: node executions per second (wall), and the CPU per node of each side summed
over its processes (``time.process_time``), the figure least disturbed by a busy machine;
the median of ``--repeat`` rounds; then a profile of one process verifying, by where the
time goes. Goal (2 cores): >= 5,000 nodes/s.

    ./taskw bench:replay
    ./taskw bench:replay -- --runs 2000 --processes 2 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import row, servers
from chiffon.core.runtime import tune_gc
from chiffon.events import CATALOG, Actor, new_event, uuid7
from chiffon.events.runs import ApprovalDecided, RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.domain import RunState
from chiffon.executor.execution import RunExecution
from chiffon.executor.models import ModelGateway
from chiffon.executor.outputs import OutputStore
from chiffon.executor.replay.batch import Totals, verify_in_processes, verify_stored
from chiffon.executor.replay.driver import Counters
from chiffon.executor.replay.recorded import RecordedRun
from chiffon.executor.replay.source import RunRef, RunSource
from tests.support.workflows import store_workflow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
USER = Actor(kind="user", id="bench")
EXECUTOR = Actor.service("executor", 1)
SHAPES: list[tuple[str, dict[str, Any], list[bool]]] = [
    ("linear.yaml", {"topic": "tides"}, []),
    ("review-loop.yaml", {"topic": "tides"}, []),
    ("draft-review.yaml", {"topic": "lighthouses"}, []),
    ("parallel-approval.yaml", {"goal": "move the database"}, [False, True]),
]


async def run_for_real(
    store: JetStreamEventStore,
    source: str,
    run_id: str,
    inputs: dict[str, Any],
    decisions: list[bool],
) -> str:
    workflow = await store_workflow(store, source, USER)
    spec = workflow.spec
    key = AggregateKey("run", run_id)
    request = RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs=inputs)
    await store.append(key, [new_event(request, aggregate_id=run_id, actor=USER)], 0)
    while True:
        _, version = await store.read_aggregate(key)
        claim = RunClaimed(executor="executor-1", pid=os.getpid(), work_seq=1)
        await store.append(key, [new_event(claim, aggregate_id=run_id, actor=EXECUTOR)], version)
        events, _ = await store.read_aggregate(key)
        execution = RunExecution(
            store=store,
            workflow=workflow,
            run=RunState.from_events(run_id, [(e.envelope, e.sequence) for e in events]),
            actor=EXECUTOR,
            llm=ModelGateway(offline_mode="always"),
            outputs=OutputStore(store, store.streams.namespace),
        )
        outcome = await execution.execute()
        if outcome != "suspended" or not decisions:
            return outcome
        for approval in execution.run.pending_approvals():
            decided = ApprovalDecided(
                node_id=approval.node_id, iteration=approval.iteration, approved=decisions.pop(0)
            )
            await store.append(key, [new_event(decided, aggregate_id=run_id, actor=USER)])


async def store_runs(url: str, namespace: str, runs: int) -> list[RunRef]:
    """One run of each shape for real, then copies with fresh ids up to ``runs``."""
    async with JetStreamEventStore.connect(url, CATALOG, namespace=namespace) as store:
        await store.setup()
        templates = []
        for example, inputs, decisions in SHAPES:
            run_id = f"shape-{example.removesuffix('.yaml')}"
            source = (EXAMPLES / example).read_text()
            outcome = await run_for_real(store, source, run_id, inputs, list(decisions))
            assert outcome == "succeeded", (example, outcome)
            events, _ = await store.read_aggregate(AggregateKey("run", run_id))
            templates.append([e.envelope for e in events])
        run_ids = [f"copy-{i:06d}" for i in range(runs)]
        requested: dict[str, int] = {}

        async def copy(index: int, run_id: str) -> None:
            envelopes = [
                e.model_copy(
                    update={"aggregate_id": run_id, "correlation_id": run_id, "event_id": uuid7()}
                )
                for e in templates[index % len(templates)]
            ]
            stored = await store.append(AggregateKey("run", run_id), envelopes, 0)
            requested[run_id] = stored.sequences[0]

        for start in range(0, runs, 100):
            await asyncio.gather(
                *(copy(i, run_ids[i]) for i in range(start, min(runs, start + 100)))
            )
        return [RunRef(run_id, requested[run_id]) for run_id in run_ids]


class _NatsPyReads(RunSource):
    """``RunSource`` reading its pass as it did before ``eventstore.stream_reader``: the
    store's ``stored_batches`` (a nats-py ``Msg`` per message, its headers parsed)."""

    async def _gather(self, refs: Any) -> dict[bytes, list[tuple[bytes, int]]]:
        held: dict[bytes, list[tuple[bytes, int]]] = {r.run_id.encode(): [] for r in refs}
        prefix = self.store.streams.aggregate_filter("run", "").removesuffix(".>")
        cut = len(prefix)
        start = min(r.requested for r in refs)
        async for batch in self.store.stored_batches("RUNS", start=start, batch=1_000):
            for message in batch:
                subject = message.subject
                kept = held.get(subject[cut : subject.find(".", cut)].encode())
                if kept is not None:
                    kept.append((message.data, message.sequence))
        return held


async def _read_chunk(
    url: str, namespace: str, runs: list[RunRef], how: str
) -> tuple[int, float, float]:
    started, began = time.process_time(), time.perf_counter()
    nodes = 0
    async with JetStreamEventStore.connect(url, CATALOG, namespace=namespace) as store:
        source = _NatsPyReads(store) if how == "nats-py" else RunSource(store)
        if how == "one-by-one":
            for begin in range(0, len(runs), 32):
                records = await asyncio.gather(
                    *(source.run(r.run_id) for r in runs[begin : begin + 32])
                )
                nodes += sum(len(r.started) for r in records)
        else:
            async for run_id, record in source.runs(runs):
                if not isinstance(record, RecordedRun):
                    raise AssertionError((run_id, record))
                nodes += len(record.started)
    return nodes, time.process_time() - started, time.perf_counter() - began


def read_worker(url: str, namespace: str, runs: list[RunRef], how: str) -> tuple[int, float, float]:
    tune_gc()
    return asyncio.run(_read_chunk(url, namespace, runs, how))


def read_in_processes(
    url: str, namespace: str, runs: list[RunRef], processes: int, *, how: str = "raw"
) -> tuple[int, float, float]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    size = -(-len(runs) // processes)
    shares = [runs[i : i + size] for i in range(0, len(runs), size)]
    with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(read_worker, url, namespace, s, how) for s in shares]
        done = [f.result() for f in futures]
    return sum(n for n, _, _ in done), sum(c for _, c, _ in done), max(w for _, _, w in done)


# Where a sample's CPU is counted: the first rule with a frame on the sample's stack
# (file fragment, function name or "" for any), in this order.
WHERE: list[tuple[str, list[tuple[str, str]]]] = [
    ("decoding the events (pydantic, from JSON)", [("events/registry.py", "decode")]),
    (
        "reading the stream (NATS wire, raw messages, picked by run)",
        [("eventstore/", ""), ("nats/", ""), ("replay/source.py", "_gather")],
    ),
    ("the comparison (steps, first divergence)", [("replay/normalize.py", "")]),
    ("compiling each workflow version once", [("executor/repository.py", "compile")]),
    ("indexing the record", [("replay/recorded.py", "index_run")]),
    ("the node runners (the executor's own code, below)", [("executor/graph.py", "run_node")]),
    (
        "the run's set-up and end (prefix, RunExecution, end event)",
        [("replay/driver.py", "verify_run"), ("executor/execution.py", "")],
    ),
    ("stepping the graph (replay.steps)", [("replay/steps.py", "")]),
]
# Inside the node runners, the same way.
INSIDE_NODES: list[tuple[str, list[tuple[str, str]]]] = [
    (
        "the run's events: envelope, capture store, fold",
        [
            ("replay/driver.py", "event"),
            ("replay/capture.py", ""),
            ("executor/domain.py", ""),
        ],
    ),
    ("payloads (pydantic validation)", [("pydantic/", "")]),
    ("spans (no tracer configured)", [("opentelemetry/", ""), ("core/tracing.py", "")]),
    ("output-size JSON and storable checks", [("json/", ""), ("events/storable.py", "")]),
    (
        "templates, expressions, output parsing",
        [
            ("chiffon/workflow/", ""),
            ("nodes/output_schema.py", ""),
        ],
    ),
    ("recorded answers (models, agents)", [("replay/answers.py", ""), ("replay/recorded.py", "")]),
    ("asyncio (timeouts, locks, tasks)", [("asyncio/", "")]),
    ("the node runners' own lines", [("executor/nodes/", ""), ("executor/execution.py", "")]),
]


def _place(stack: list[tuple[str, str]], rules: list[tuple[str, list[tuple[str, str]]]]) -> str:
    for name, marks in rules:
        for file, function in marks:
            if any(file in f and (not function or function == n) for f, n in stack):
                return name
    return "the rest (event loop, batching, results)"


async def profile_one_process(url: str, namespace: str, runs: list[RunRef]) -> str:
    """Where one process's CPU goes while it verifies ``runs``, sampled: every 0.5 ms of
    its CPU a signal notes the stack. cProfile's cost per call made the engine's many
    small calls look two to three times their share."""
    import signal

    samples: list[list[tuple[str, str]]] = []

    def sample(_signal: int, frame: Any) -> None:
        stack = []
        while frame is not None:
            stack.append((frame.f_code.co_filename, frame.f_code.co_name))
            frame = frame.f_back
        samples.append(stack)

    async with JetStreamEventStore.connect(url, CATALOG, namespace=namespace) as store:
        [r async for r in verify_stored(store, runs[:8], Counters())]  # imports
        previous = signal.signal(signal.SIGPROF, sample)
        signal.setitimer(signal.ITIMER_PROF, 0.0005, 0.0005)
        started = time.process_time()
        try:
            results = [r async for r in verify_stored(store, runs, Counters())]
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0, 0)
            signal.signal(signal.SIGPROF, previous)
        cpu = time.process_time() - started
    nodes = sum(r.verdict.nodes for r in results if r.verdict is not None)
    per_node = cpu / nodes * 1000
    where = Counter(_place(stack, WHERE) for stack in samples)
    inside = Counter(
        _place(stack, INSIDE_NODES)
        for stack in samples
        if _place(stack, WHERE).startswith("the node runners")
    )
    own = Counter(f"{Path(s[0][0]).name}:{s[0][1]}" for s in samples if s)
    total = len(samples) or 1
    out = io.StringIO()
    out.write(
        f"  one process, {len(runs)} runs, {nodes} nodes: {per_node:.3f} ms CPU/node,"
        f" {len(samples)} samples\n"
    )
    for name, count in where.most_common():
        out.write(f"    {name:<60} {count / total:6.1%}  {count / total * per_node:.3f} ms/node\n")
        if name.startswith("the node runners"):
            for part, inner in inside.most_common():
                out.write(
                    f"      {part:<58} {inner / total:6.1%}  {inner / total * per_node:.3f}\n"
                )
    # A signal is handled between Python lines: time inside a C function (pydantic's
    # validation, JSON encoding) is counted to the Python line that runs next, so the
    # JSON validation of an event shows under its envelope's ``_utc`` validator.
    out.write("  functions by their own time (C time counted to the next Python line):\n")
    for name, count in own.most_common(15):
        out.write(f"    {name:<60} {count / total:6.1%}  {count / total * per_node:.3f} ms/node\n")
    return out.getvalue()


def bare_langgraph_ms_per_node(nodes: int = 10, invocations: int = 300) -> float:
    """CPU per node of a chain of no-op async LangGraph nodes: the floor under any engine
    built on LangGraph, measured here beside the replay (same machine, same load)."""
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        n: int

    async def step(state: State) -> dict[str, int]:
        return {"n": state["n"] + 1}

    graph: StateGraph[Any] = StateGraph(State)
    for i in range(nodes):
        graph.add_node(f"n{i}", step)
        graph.add_edge(START if i == 0 else f"n{i - 1}", f"n{i}")
    graph.add_edge(f"n{nodes - 1}", END)
    compiled = graph.compile()

    async def run() -> float:
        await compiled.ainvoke({"n": 0})
        started = time.process_time()
        for _ in range(invocations):
            await compiled.ainvoke({"n": 0})
        return (time.process_time() - started) / (invocations * nodes) * 1000

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile-runs", type=int, default=500)
    args = parser.parse_args()
    tune_gc()
    with servers(postgres=False) as running:
        url, namespace = running.nats.url, "bench"
        started = time.perf_counter()
        run_ids = asyncio.run(store_runs(url, namespace, args.runs))
        print(
            f"stored {len(run_ids)} runs in {time.perf_counter() - started:.1f}s; load {os.getloadavg()}"
        )
        reads: list[tuple[float, float, float]] = []  # wall with start-up, CPU, wall without
        lookups: list[tuple[float, float]] = []  # the same runs read one by one: CPU, wall
        natspy: list[tuple[float, float]] = []  # one pass through nats-py's messages
        verifies: list[tuple[float, float, float]] = []
        through: list[tuple[float, float]] = []  # verify through LangGraph: CPU, wall
        nodes = 0
        for round_ in range(args.repeat):
            began = time.perf_counter()
            read_nodes, read_cpu, read_inside = read_in_processes(
                url, namespace, run_ids, args.processes
            )
            reads.append((time.perf_counter() - began, read_cpu, read_inside))
            _, lookup_cpu, lookup_inside = read_in_processes(
                url, namespace, run_ids, args.processes, how="one-by-one"
            )
            lookups.append((lookup_cpu, lookup_inside))
            _, natspy_cpu, natspy_inside = read_in_processes(
                url, namespace, run_ids, args.processes, how="nats-py"
            )
            natspy.append((natspy_cpu, natspy_inside))
            began = time.perf_counter()
            totals: Totals = verify_in_processes(url, namespace, run_ids, args.processes)
            verifies.append((time.perf_counter() - began, totals.cpu_seconds, totals.wall_seconds))
            nodes = totals.nodes
            langgraph = verify_in_processes(
                url, namespace, run_ids, args.processes, through_langgraph=True
            )
            assert langgraph.nodes == nodes
            assert all(r.verdict is not None and r.verdict.same for r in langgraph.results)
            through.append((langgraph.cpu_seconds, langgraph.wall_seconds))
            assert nodes == read_nodes, (nodes, read_nodes)
            same = sum(1 for r in totals.results if r.verdict is not None and r.verdict.same)
            assert same == len(run_ids), f"{len(run_ids) - same} runs did not verify"
            assert totals.counters.agent_tasks == 0
            print(
                f"round {round_ + 1}: read {nodes / reads[-1][2]:,.0f} nodes/s, verify"
                f" {nodes / verifies[-1][2]:,.0f} nodes/s (wall once started; with process"
                f" start-up {nodes / reads[-1][0]:,.0f} and {nodes / verifies[-1][0]:,.0f});"
                f" load {os.getloadavg()[0]:.1f}"
            )
        read_wall = statistics.median(w for _, _, w in reads)
        read_cpu = statistics.median(c for _, c, _ in reads)
        verify_wall = statistics.median(w for _, _, w in verifies)
        verify_cpu = statistics.median(c for _, c, _ in verifies)
        print(
            f"\n{len(run_ids)} runs, {nodes} node executions, {args.processes} processes,"
            f" median of {args.repeat} (wall once the processes are up)"
        )
        row(
            "read the runs' events (baseline)",
            f"{nodes / read_wall:,.0f} nodes/s",
            f"{read_cpu / nodes * 1000:.3f} ms CPU/node",
        )
        row(
            "  the same pass through nats-py's messages",
            f"{nodes / statistics.median(w for _, w in natspy):,.0f} nodes/s",
            f"{statistics.median(c for c, _ in natspy) / nodes * 1000:.3f} ms CPU/node",
        )
        row(
            "read them one run at a time (a lookup each)",
            f"{nodes / statistics.median(w for _, w in lookups):,.0f} nodes/s",
            f"{statistics.median(c for c, _ in lookups) / nodes * 1000:.3f} ms CPU/node",
        )
        row(
            "verify (read + re-drive + compare)",
            f"{nodes / verify_wall:,.0f} nodes/s",
            f"{verify_cpu / nodes * 1000:.3f} ms CPU/node",
        )
        row(
            "verify, CPU-bound rate on these cores",
            f"{nodes / verify_cpu * args.processes:,.0f} nodes/s",
            f"(nodes / CPU seconds x {args.processes} processes; goal >= 5,000)",
        )
        row("re-drive + compare alone", f"{(verify_cpu - read_cpu) / nodes * 1000:.3f} ms CPU/node")
        through_cpu = statistics.median(c for c, _ in through)
        row(
            "verify, stepped by LangGraph's loop",
            f"{nodes / statistics.median(w for _, w in through):,.0f} nodes/s",
            f"{through_cpu / nodes * 1000:.3f} ms CPU/node",
        )
        row(
            "  its re-drive + compare alone",
            f"{(through_cpu - read_cpu) / nodes * 1000:.3f} ms CPU/node",
        )
        row("bare LangGraph node (floor)", f"{bare_langgraph_ms_per_node():.3f} ms CPU/node")
        print(f"load average {os.getloadavg()}\n")
        # The last runs: a pass reads from the first run asked for to the stream's end, so
        # the first ones would charge them with reading every later run's events too.
        print(asyncio.run(profile_one_process(url, namespace, run_ids[-args.profile_runs :])))


if __name__ == "__main__":
    main()
