"""Approvals survive a restart of every process: the executor, NATS and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from chiffon.cli.direct_client import DirectClient
from chiffon.core.settings import ChiffonSettings
from chiffon.devstack.servers import NatsServer, PostgresServer
from chiffon.events import Actor

from .conftest import Spawn
from .helpers import events_until, of_type, run_view


async def test_approvals_survive_a_restart_of_every_process(
    spawn_executor: Spawn,
    client: DirectClient,
    client_settings: ChiffonSettings,
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    examples: Path,
) -> None:
    executor = await spawn_executor(1)
    await client.register_workflow((examples / "parallel-approval.yaml").read_text())
    run_id = (await client.start_run("parallel-approval", inputs={"goal": "ship the beta"}))[
        "run_id"
    ]
    events = await events_until(client, run_id, lambda e: e.type == "run.suspended")
    assert of_type(events, "run.suspended") == [{"reason": "approval", "waiting_for": ["sign_off"]}]
    merged = of_type(events, "run.node.completed")
    assert {p["node_id"] for p in merged} == {"risks", "steps", "merge"}
    await run_view(client, run_id, "waiting_approval")
    assert [a.node_id for a in await client.list_pending_approvals()] == ["sign_off"]

    # Stop everything: the executor, then PostgreSQL and NATS; start them all again.
    await client.close()
    executor.stop()
    nats_server.stop()
    postgres_server.stop()
    nats_server.start()
    postgres_server.start()
    await spawn_executor(2)

    async with DirectClient(client_settings, actor=Actor(kind="user", id="bob")) as again:
        rejected = await again.approve(
            run_id, "sign_off", approve=False, comment="add a rollback step"
        )
        assert rejected["status"] == "pending"
        events = await events_until(
            again, run_id, lambda e: e.type == "run.suspended" and e.seq > events[-1].seq
        )
        merges = [p for p in of_type(events, "run.node.completed") if p["node_id"] == "merge"]
        assert len(merges) == 2  # sent back to merge with the reviewer's note
        await again.approve(run_id, "sign_off", comment="ship it")
        events = await events_until(again, run_id)
        assert events[-1].type == "run.completed"
        outputs = events[-1].payload["outputs"]
        assert outputs["approved"] is True and outputs["published"] is True
        assert outputs["approval_comment"] == "ship it"
        assert Counter(p["node_id"] for p in of_type(events, "run.node.completed")) == Counter(
            {"risks": 1, "steps": 1, "merge": 2, "sign_off": 2, "publish": 1}
        )
        run = await run_view(again, run_id, "succeeded")
        assert [(a.iteration, a.approved, a.decided_by) for a in run.approvals] == [
            (1, False, "user:bob"),
            (2, True, "user:bob"),
        ]
        assert run.executor == "executor-2"
        assert not await again.list_pending_approvals()
