"""Approvals survive a restart of every process: the executor, NATS and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from chiffon.cli.client import RunEvent
from chiffon.cli.http_client import GatewayClient
from chiffon.devstack.servers import NatsServer, PostgresServer
from tests.integration.gateway.support import Service, stop_all

from .conftest import Spawn, client_for, key_of, start_gateway
from .helpers import events_until, of_type, run_view


async def test_approvals_survive_a_restart_of_every_process(
    spawn_executor: Spawn,
    client: GatewayClient,
    gateway: Service,
    service_env: dict[str, str],
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    examples: Path,
    tmp_path: Path,
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

    # Stop everything: the gateway, the executor, then PostgreSQL and NATS; start them all
    # again, and decide as another user (a key of bob's own) through the new gateway.
    await client.close()
    stop_all([gateway])
    executor.stop()
    nats_server.stop()
    postgres_server.stop()
    nats_server.start()
    postgres_server.start()
    await spawn_executor(2)
    reborn = await start_gateway(service_env, tmp_path, "gateway-reborn")
    try:
        async with client_for(reborn) as admin:
            bob_key, bob = await key_of(admin, "bob")
        await _decide_after_the_restart(client_for(reborn, bob_key), bob, run_id, events)
    finally:
        stop_all([reborn])


async def _decide_after_the_restart(
    again: GatewayClient, bob: str, run_id: str, events: list[RunEvent]
) -> None:
    async with again:
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
            (1, False, bob),
            (2, True, bob),
        ]
        assert run.executor == "executor-2"
        assert not await again.list_pending_approvals()
