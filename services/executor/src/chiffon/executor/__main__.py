"""Composition root of the executor: settings → telemetry → store → app → servers.

``python -m chiffon.executor`` with ``CHIFFON_REPLICA=k`` and ``CHIFFON_PORT`` runs
replica k; every replica serves the executor's commands (one queue group), takes work
from the shared durable consumer, and runs the workflows and runs projections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

from chiffon.commands import ApproveNode, CancelRun, CommandBus, RegisterWorkflow, StartRun
from chiffon.commands.model import ForkRun
from chiffon.core.logging import get_logger
from chiffon.core.runtime import tune_gc
from chiffon.core.service import ServiceContext, run_service
from chiffon.events import Actor
from chiffon.executor.agents.directory import AgentDirectory
from chiffon.executor.agents.dispatch import build_dispatch, weights_from
from chiffon.executor.agents.resumer import CapacityResumer
from chiffon.executor.application import Runs, Workflows
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.executor.budgets.gate import BudgetGate
from chiffon.executor.budgets.reserver import Reserver
from chiffon.executor.budgets.resumer import BudgetResumer
from chiffon.executor.models import ModelGateway
from chiffon.executor.repository import RunRepository, WorkflowRepository
from chiffon.executor.settings import ExecutorSettings
from chiffon.executor.worker import RunWorker
from chiffon.projections import ProjectionRunner
from chiffon.projections.host import Resources, open_resources
from chiffon.readmodels.projections import RunsProjection, WorkflowsProjection
from chiffon.spend.prices import PriceBook

log = get_logger(__name__)


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, ExecutorSettings)
    # Ready only once commands are served and the projector is started: the checks
    # added on the way pass earlier (while the worker's consumer is being set up).
    started = ctx.health.starting()
    llm = ModelGateway(offline_mode=settings.llm_offline, environment=settings.environment)
    # Import LiteLLM now (seconds of CPU), never on a run's path; in a thread, so the
    # health endpoint answers meanwhile and NATS/PostgreSQL connect in parallel.
    importing = asyncio.ensure_future(asyncio.to_thread(llm.setup))
    ctx.health.add(
        "llm", lambda: (importing.done(), None if importing.done() else "importing LiteLLM")
    )
    async with open_resources(ctx) as resources:
        store = resources.store
        workflows = WorkflowRepository(store)
        runs = RunRepository(store)
        run_commands = Runs(store, workflows, runs)
        workflow_commands = Workflows(store, workflows)
        bus = CommandBus(store, settings.namespace)
        directory = AgentDirectory(
            store,
            weights=weights_from(settings),
            unreachable_hold=settings.agent_unreachable_hold_seconds,
        )
        await directory.start()  # folds the AGENTS stream, then follows it live
        agents = build_dispatch(settings, directory)
        resumer = CapacityResumer(
            store, directory, runs, Actor.service("executor", settings.replica)
        )
        await resumer.start(ctx.stopping)
        executor_actor = Actor.service("executor", settings.replica)
        budgets = BudgetDirectory(store)
        await budgets.start()  # folds the COSTS stream's budget events, then follows them
        reserver = Reserver(store, budgets, executor_actor)
        gate = BudgetGate(
            budgets,
            reserver,
            PriceBook.load(settings.price_overrides),
            grace_seconds=settings.budget_reservation_grace_seconds,
        )
        budget_resumer = BudgetResumer(
            store, budgets, runs, executor_actor, sweep_seconds=settings.budget_resume_sweep_seconds
        )
        await budget_resumer.start(ctx.stopping)
        worker = RunWorker(
            store=store,
            settings=settings,
            name=ctx.instance,
            workflows=workflows,
            runs=runs,
            llm=llm,
            agents=agents,
            budget=gate,
        )
        await budgets.caught_up(10.0)
        await importing
        await worker.setup()
        tune_gc()  # again: LiteLLM's modules, imported since, are for good too
        ctx.health.add("work", worker.healthy)
        subscriptions = [
            await bus.serve(RegisterWorkflow, workflow_commands.register),
            await bus.serve(StartRun, run_commands.start),
            await bus.serve(ForkRun, run_commands.fork),
            await bus.serve(CancelRun, run_commands.cancel),
            await bus.serve(ApproveNode, run_commands.approve),
        ]
        projections: list[asyncio.Task[None]] = []
        if settings.projections == "inline":
            projections = run_projections(resources)
        elif settings.projections == "process":
            projections = [start_projector(ctx)]
        started()
        log.info("executor.ready", instance=ctx.instance)
        work = asyncio.create_task(worker.run(ctx.stopping), name="executor:work")
        stop = asyncio.create_task(ctx.stopping.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        ctx.stopping.set()
        await work
        for task in projections:
            task.cancel()
        await asyncio.gather(*projections, return_exceptions=True)
        await resumer.stop()
        await gate.drain()  # leases given back, settlements of calls that ended appended
        await budget_resumer.stop()
        await budgets.stop()
        await agents.close()


def run_projections(resources: Resources) -> list[asyncio.Task[None]]:
    """The runs and workflows read models, written in batches (see ``Projection.poll``)."""
    tasks = []
    for projection in (RunsProjection(), WorkflowsProjection()):
        runner = ProjectionRunner(resources.store, resources.engine, projection)
        resources.runners.append(runner)

        def check(runner: ProjectionRunner = runner) -> tuple[bool, str | None]:
            status = runner.status
            return status.healthy, (status.error or f"position {status.position}")

        resources.ctx.health.add(f"projection:{projection.name}", check)
        tasks.append(asyncio.create_task(runner.run(), name=f"projection:{projection.name}"))
    return tasks


class ProjectorChild:
    """This replica's projector process, and whether it has reported in.

    The replica is ready once its projector says it is working or standing by (a byte
    on a pipe), not merely started: its imports take a second or more, and a read right
    after start-up would find the read models not yet followed."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.reported = asyncio.Event()

    def check(self) -> tuple[bool, str | None]:
        running = self.process is not None and self.process.returncode is None
        return running and self.reported.is_set(), None if self.reported.is_set() else "starting"


def start_projector(ctx: ServiceContext) -> asyncio.Task[None]:
    # The check is added before the task runs: a readiness report in between must
    # already see the replica as not ready.
    projector = ProjectorChild()
    ctx.health.add("projector", projector.check)
    return asyncio.create_task(supervise_projector(projector), name="projector")


async def supervise_projector(projector: ProjectorChild) -> None:
    """Keep the projector child process running (restarted with back-off if it dies)."""
    reported = projector.reported
    child: asyncio.subprocess.Process | None = None
    backoff = 0.5
    try:
        while True:
            reported.clear()
            read_fd, write_fd = os.pipe()
            env = {
                **os.environ,
                "CHIFFON_PROJECTOR_PARENT": str(os.getpid()),
                "CHIFFON_PROJECTOR_READY_FD": str(write_fd),
            }
            try:
                child = projector.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "chiffon.executor.projector",
                    env=env,
                    pass_fds=(write_fd,),
                )
            finally:
                os.close(write_fd)
            watcher = asyncio.create_task(_wait_report(read_fd, reported))
            started = time.monotonic()
            code = await child.wait()
            watcher.cancel()
            log.warning("projector.exited", code=code)
            backoff = 0.5 if time.monotonic() - started > 30 else min(backoff * 2, 30)
            await asyncio.sleep(backoff)
    finally:
        if child is not None and child.returncode is None:
            child.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.wait(), 10)


async def _wait_report(read_fd: int, reported: asyncio.Event) -> None:
    """Set ``reported`` when the child writes to the pipe (it closes it right after)."""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        if await asyncio.to_thread(pipe.read, 1):
            reported.set()


# LiteLLM prepares each call in a worker thread, which then waits for the GIL while the
# event loop runs other runs' steps: up to the switch interval (5 ms by default) per
# call. 1 ms keeps that wait short; with two replicas on two cores and a 50 ms model it
# raised runs/s by about a tenth.
GIL_SWITCH_INTERVAL = 0.001


def main() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    run_service("executor", ExecutorSettings(), serve)


if __name__ == "__main__":
    main()
