"""Budget enforcement benchmark: what reserving and settling adds to an LLM call.

    ./taskw bench:cost            (or: .venv/bin/python -m bench.cost_reservation [--quick])

A real NATS (JetStream) server; the executor's own run execution (``RunExecution``, the
graph, the llm node) in this process, on the offline echo model (``chiffon/echo``,
answered in-process, so the call itself costs microseconds and what is measured is the
executor's path) given a price by override, so it is not zero-cost and is reserved.

Waves of 50 concurrent runs of a one-node workflow, taking turns: under one global
budget (hard limit far above the spend: every call reserved against it, then settled,
each in the group commits of one replica's ``Reserver``) and with no budget at all (the
same runs, the same store). A run's time is from ``execute()`` to its end (its node's
events appended). The added latency per call is the difference of the two conditions'
p50 and p99, per round; the figure is the median of 3 rounds.

Goal (issue 18, 2 cores): added p50 <= 1 ms, p99 <= 5 ms. Printed beside the figures;
the benchmark never fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from bench.common import percentile, row, servers
from chiffon.core.runtime import tune_gc
from chiffon.events import CATALOG, Actor, Envelope, new_event
from chiffon.events.costs import BudgetSet
from chiffon.events.runs import RunClaimed, RunRequested
from chiffon.eventstore import AggregateKey, JetStreamEventStore
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.executor.budgets.gate import BudgetGate, Hold, Refusal
from chiffon.executor.budgets.reserver import Reserver
from chiffon.executor.domain import RunState
from chiffon.executor.execution import LoadedWorkflow, RunExecution
from chiffon.executor.graph import build_graph
from chiffon.executor.models import ModelGateway, ModelReply, ModelRequest
from chiffon.executor.outputs import OutputStore
from chiffon.spend.budgets import BudgetState
from chiffon.spend.prices import PriceBook
from chiffon.workflow import load_spec

CONCURRENCY = 50
PROVIDER_LATENCY = 0.05
OVERRIDES = {"chiffon/echo": {"input_per_token": "0.000001", "output_per_token": "0.000002"}}
USER = Actor(kind="api_key", id="bench-key", name="bench")
EXECUTOR = Actor.service("executor", 1)
WORKFLOW = """
name: bench-cost
version: 1
nodes:
  - {id: draft, type: llm, model: chiffon/echo, prompt: "price this call", max_tokens: 64}
"""


class TimedGate(BudgetGate):
    """The gate, timing what each call waits for its reservation (its settlement is
    appended while the node goes on: the node does not wait for it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent_ms: dict[str, float] = {}

    async def hold(self, budgets: Sequence[BudgetState], **call: Any) -> Hold | Refusal:
        started = time.perf_counter()
        try:
            return await super().hold(budgets, **call)
        finally:
            self.spent_ms[call["reservation_id"]] = (time.perf_counter() - started) * 1000


class ProviderLike:
    """The offline echo model answering after ``PROVIDER_LATENCY`` seconds, out of
    process as far as the node can tell: as a provider would, so the replica's loop is
    not saturated by 50 runs that never wait on anything."""

    def __init__(self) -> None:
        self.echo = ModelGateway(offline_mode="always")

    def in_process(self, model: str) -> bool:
        return False

    async def complete(self, request: ModelRequest) -> ModelReply:
        await asyncio.sleep(PROVIDER_LATENCY)
        return await self.echo.complete(request)


class Bench:
    def __init__(self, store: JetStreamEventStore, gate: TimedGate) -> None:
        self.store = store
        self.gate = gate
        spec = load_spec(WORKFLOW)
        self.workflow = LoadedWorkflow(spec=spec, digest=spec.digest(), graph=build_graph(spec))
        self.llm = ProviderLike()
        self.outputs = OutputStore(store, store.streams.namespace)

    async def prepared(self) -> RunState:
        """A run requested and claimed, as the worker hands it to execution."""
        run_id = uuid.uuid4().hex
        key = AggregateKey("run", run_id)
        spec = self.workflow.spec
        request = RunRequested(workflow=spec.name, version=1, digest=spec.digest(), inputs={})
        claim = RunClaimed(executor="executor-1", pid=1, work_seq=1)
        events: list[Envelope[Any]] = [
            new_event(request, aggregate_id=run_id, actor=USER),
            new_event(claim, aggregate_id=run_id, actor=EXECUTOR),
        ]
        result = await self.store.append(key, events, expected_version=0)
        return RunState.from_events(run_id, zip(events, result.sequences, strict=True))

    async def one(self, state: RunState, budget: bool) -> float:
        execution = RunExecution(
            store=self.store,
            workflow=self.workflow,
            run=state,
            actor=EXECUTOR,
            llm=self.llm,  # type: ignore[arg-type]
            outputs=self.outputs,
            budget=self.gate if budget else None,
        )
        started = time.perf_counter()
        outcome = await execution.execute()
        elapsed = (time.perf_counter() - started) * 1000
        assert outcome == "succeeded", outcome
        return elapsed

    async def wave(self, budget: bool, runs_each: int) -> list[float]:
        """``CONCURRENCY`` runners, each executing ``runs_each`` runs back to back (the
        runs requested and claimed beforehand, so that only executions share the loop)."""
        states = await asyncio.gather(*(self.prepared() for _ in range(CONCURRENCY * runs_each)))

        async def runner(mine: list[RunState]) -> list[float]:
            return [await self.one(state, budget) for state in mine]

        done = await asyncio.gather(*(runner(states[k::CONCURRENCY]) for k in range(CONCURRENCY)))
        return [t for times in done for t in times]


async def main(quick: bool) -> None:
    tune_gc()
    waves = 4 if quick else 12
    with servers(postgres=False) as srv:
        namespace = "bench" + uuid.uuid4().hex[:8]
        async with JetStreamEventStore.connect(srv.nats.url, CATALOG, namespace=namespace) as store:
            await store.setup()
            budget = BudgetSet(
                scope="global", scope_id="global", period="day", hard_usd=Decimal("1000000")
            )
            admin = Actor(kind="user", id="admin")
            await store.append(
                AggregateKey("budget", "global"),
                [new_event(budget, aggregate_id="global", actor=admin)],
            )
            directory = BudgetDirectory(store)
            await directory.start()
            await directory.caught_up(10.0)
            reserver = Reserver(store, directory, EXECUTOR)
            gate = TimedGate(directory, reserver, PriceBook.load(OVERRIDES))
            bench = Bench(store, gate)
            await bench.wave(True, 2)  # warm-up: imports, connections, the graph
            await bench.wave(False, 2)
            print(
                f"cost reservation: {CONCURRENCY} concurrent runs of one llm node (chiffon/echo"
                f" priced by override, answering in {PROVIDER_LATENCY * 1000:g} ms),"
                f" {waves} x {CONCURRENCY * 5} runs per condition per round, 3 rounds"
            )
            added_p50: list[float] = []
            added_p99: list[float] = []
            gate_p50: list[float] = []
            cpu_added: list[float] = []
            gate_p99: list[float] = []
            for number in range(1, 4):
                with_budget: list[float] = []
                without: list[float] = []
                appends_before = reserver.appends
                gate.spent_ms.clear()
                cpu = {True: 0.0, False: 0.0}
                for _ in range(waves):
                    for condition in (True, False):
                        started_cpu = time.process_time()
                        times = await bench.wave(condition, 5)
                        cpu[condition] += time.process_time() - started_cpu
                        (with_budget if condition else without).extend(times)
                cpu_added.append((cpu[True] - cpu[False]) * 1000 / len(with_budget))
                appends = reserver.appends - appends_before
                p50 = statistics.median(with_budget) - statistics.median(without)
                p99 = percentile(with_budget, 99) - percentile(without, 99)
                added_p50.append(p50)
                added_p99.append(p99)
                in_gate = list(gate.spent_ms.values())
                gate_p50.append(statistics.median(in_gate))
                gate_p99.append(percentile(in_gate, 99))
                row(
                    f"round {number}: run p50 / p99, no budget",
                    f"{statistics.median(without):.2f} / {percentile(without, 99):.2f} ms",
                )
                row(
                    f"round {number}: run p50 / p99, global budget",
                    f"{statistics.median(with_budget):.2f} / {percentile(with_budget, 99):.2f} ms",
                    f"{appends} ledger appends for {len(with_budget)} calls",
                )
                row(
                    f"round {number}: CPU of this process per run, added",
                    f"{cpu_added[-1]:.3f} ms",
                    "(the runs' preparation included, the same in both)",
                )
                row(
                    f"round {number}: waiting for its reservation, p50 / p99",
                    f"{gate_p50[-1]:.3f} / {gate_p99[-1]:.3f} ms",
                )
            print()
            row(
                "added per call, p50 / p99 (median of 3)",
                f"{statistics.median(added_p50):.2f} / {statistics.median(added_p99):.2f} ms",
                "goal <= 1 / 5 ms (run time, budget minus none)",
            )
            row(
                "CPU added per call (median of 3)",
                f"{statistics.median(cpu_added):.3f} ms",
            )
            row(
                "waiting for the reservation, p50 / p99",
                f"{statistics.median(gate_p50):.2f} / {statistics.median(gate_p99):.2f} ms",
                "(median of 3; the settlement is not waited for)",
            )
            await gate.drain()
            await directory.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer waves")
    args = parser.parse_args()
    asyncio.run(main(args.quick))
