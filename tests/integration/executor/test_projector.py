"""The read models are projected by one replica at a time, and by another when it dies."""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from chiffon.cli.http_client import GatewayClient
from tests.support.fixtures import eventually

from .conftest import ExecutorProcess, Spawn, start_ready
from .helpers import events_until, run_view

INPUTS = {"topic": "event sourcing"}


def leading(proc: ExecutorProcess) -> bool:
    """Whether the replica's projector took the lead (its log says so)."""
    for line in proc.log.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("event") == "projector.leading":
                return True
        except ValueError:
            continue
    return False


async def test_one_projector_leads_and_another_takes_over_when_its_replica_dies(
    spawn_executor: Spawn, client: GatewayClient, examples: Path
) -> None:
    first, second = await start_ready(
        await spawn_executor(1, wait=False), await spawn_executor(2, wait=False)
    )
    await client.register_workflow((examples / "linear.yaml").read_text())
    before = (await client.start_run("linear-brief", inputs=INPUTS))["run_id"]
    await events_until(client, before)
    await run_view(client, before, "succeeded")
    leaders = [p for p in (first, second) if leading(p)]
    assert len(leaders) == 1, "exactly one replica's projector works at a time"
    [leader] = leaders
    standby = second if leader is first else first

    leader.kill()  # SIGKILL: its projector child sees its parent gone and exits
    after = (await client.start_run("linear-brief", inputs=INPUTS))["run_id"]
    await events_until(client, after)

    async def took_over() -> bool:
        return leading(standby)

    await eventually(took_over, timeout=20, message="the standby projector took the lead")
    run = await run_view(client, after, "succeeded", timeout=20)
    assert run.executor == standby.name


def projector_of(proc: ExecutorProcess) -> psutil.Process:
    children = psutil.Process(proc.pid).children()
    [child] = [c for c in children if "chiffon.executor.projector" in c.cmdline()]
    return child


async def test_the_projector_runs_below_its_replica_unless_told_otherwise(
    spawn_executor: Spawn,
) -> None:
    lowered, level = await start_ready(
        await spawn_executor(1, wait=False),
        await spawn_executor(2, env={"CHIFFON_PROJECTOR_NICE": "0"}, wait=False),
    )
    replica_nice = psutil.Process(lowered.pid).nice()
    assert projector_of(lowered).nice() == min(replica_nice + 10, 19)
    assert projector_of(level).nice() == psutil.Process(level.pid).nice()
