"""SSE: history then live, fan-out to many clients, resume with Last-Event-ID anywhere,
keep-alives, and the consumer released as soon as a client leaves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import nats

from tests.support.fixtures import eventually

from .conftest import Stack, client
from .support import ADMIN_KEY, ENDINGS, SseEvent, collect, sse_events
from .test_api import problem, start, until_status


async def follow_until(
    http: httpx.AsyncClient, url: str, stop: str, *, headers: dict[str, str] | None = None
) -> list[SseEvent]:
    """Events until (and with) the first of type ``stop``; then the client hangs up."""
    seen: list[SseEvent] = []

    async def run() -> None:
        async for event in sse_events(http, url, headers=headers):
            seen.append(event)
            if event.event == stop:
                return

    await asyncio.wait_for(run(), 30)
    return seen


async def test_history_then_live_then_end(admin: httpx.AsyncClient, workflows: list[str]) -> None:
    run_id = await start(admin, "needs-approval", goal="live")
    comments: list[str] = []
    seen: list[SseEvent] = []

    async def follow() -> None:
        async for event in sse_events(admin, f"/v1/runs/{run_id}/events", comments=comments):
            seen.append(event)

    task = asyncio.create_task(follow())
    await eventually(
        lambda: _has(seen, "run.approval.requested"), message="approval requested on SSE"
    )
    # Idle while waiting: keep-alive comments (1 s in these tests).
    await eventually(
        lambda: _async("keep-alive" in comments), timeout=5, message="keep-alive comment"
    )
    await admin.post(f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True})
    await asyncio.wait_for(task, 20)  # the stream ends by itself after the run's end
    assert seen[-1].event == "run.completed"
    ids = [e.id for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e.data["aggregate_id"] == run_id for e in seen)
    assert seen[0].data["type"] == seen[0].event == "run.requested"
    # After the end: history only, the same events, and ?after= resumes.
    again = await collect(admin, f"/v1/runs/{run_id}/events")
    assert [e.id for e in again] == ids
    tail = await collect(admin, f"/v1/runs/{run_id}/events?after={ids[2]}")
    assert [e.id for e in tail] == ids[3:]
    nothing = await collect(
        admin, f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(ids[-1])}
    )
    assert nothing == []
    history = await collect(admin, f"/v1/runs/{run_id}/events?follow=false&after={ids[0]}")
    assert [e.id for e in history] == ids[1:]


async def _has(seen: list[SseEvent], event_type: str) -> bool:
    return any(e.event == event_type for e in seen)


async def _async(value: Any) -> Any:
    return value


async def test_two_hundred_clients_get_every_event_in_order(
    stack: Stack, workflows: list[str]
) -> None:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(
        base_url=stack.gateway.url,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        limits=limits,
        timeout=60,
    ) as http:
        run_id = await start(http, "needs-approval", goal="crowd")
        await until_status(http, run_id, "waiting_approval")
        results: list[list[SseEvent]] = [[] for _ in range(200)]
        halfway = [asyncio.Event() for _ in range(200)]

        async def follower(i: int) -> None:
            async for event in sse_events(http, f"/v1/runs/{run_id}/events"):
                results[i].append(event)
                if event.event == "run.approval.requested":
                    halfway[i].set()

        tasks = [asyncio.create_task(follower(i)) for i in range(200)]
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in halfway)), 60)
        decided = await http.post(f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True})
        assert decided.status_code == 200
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        reference = [e.id for e in await collect(http, f"/v1/runs/{run_id}/events")]
        assert reference[-1] and results[0][-1].event == "run.completed"
        assert all([e.id for e in r] == reference for r in results)


async def test_resume_after_a_cut_with_last_event_id_on_another_replica(
    stack: Stack, start_gateway: Any, workflows: list[str]
) -> None:
    second = await start_gateway(1)
    async with client(stack.gateway, ADMIN_KEY) as first, client(second, ADMIN_KEY) as other:
        run_id = await start(first, "needs-approval", goal="cut")
        before = await follow_until(first, f"/v1/runs/{run_id}/events", "run.approval.requested")
        last = before[-1].id
        # Cut off: events happen while nobody follows.
        await first.post(f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True})
        await until_status(first, run_id, "succeeded")
        resumed = await collect(
            other, f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(last)}
        )
        everything = await collect(first, f"/v1/runs/{run_id}/events")
        assert [e.id for e in before] + [e.id for e in resumed] == [e.id for e in everything]
        assert resumed[0].id > last and resumed[-1].event in ENDINGS

        # The same mid-run: the cut happens while the run is live.
        run_id = await start(first, "needs-approval", goal="cut live")
        part = await follow_until(other, f"/v1/runs/{run_id}/events", "run.approval.requested")
        waiting = asyncio.create_task(
            collect(first, f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(part[-1].id)})
        )
        await first.post(f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": True})
        rest = await asyncio.wait_for(waiting, 30)
        everything = await collect(other, f"/v1/runs/{run_id}/events")
        assert [e.id for e in part + rest] == [e.id for e in everything]


async def test_disconnect_releases_the_consumer(
    stack: Stack, admin: httpx.AsyncClient, workflows: list[str]
) -> None:
    run_id = await start(admin, "needs-approval", goal="leave")
    await until_status(admin, run_id, "waiting_approval")
    nc = await nats.connect(stack.env["CHIFFON_NATS_URL"])
    try:
        js = nc.jetstream()
        stream = f"{stack.namespace.upper()}_RUNS"
        subject = f"{stack.namespace}.run.{run_id}.>"

        async def consumers_for_run() -> int:
            infos = await js.consumers_info(stream)
            return sum(
                1
                for c in infos
                if subject in (c.config.filter_subjects or []) or c.config.filter_subject == subject
            )

        await follow_until(admin, f"/v1/runs/{run_id}/events", "run.approval.requested")
        left = time.monotonic()

        async def released() -> bool:
            return await consumers_for_run() == 0

        await eventually(released, timeout=2, interval=0.05, message="the run's consumer deleted")
        assert time.monotonic() - left < 2

        # Many clients on one run share one consumer.
        async def hold(n: int) -> None:
            async for event in sse_events(admin, f"/v1/runs/{run_id}/events"):
                if event.event == "run.approval.requested":
                    await asyncio.sleep(3600)

        holders = [asyncio.create_task(hold(i)) for i in range(10)]
        await eventually(
            lambda: _equals(consumers_for_run(), 1), timeout=5, message="one shared consumer"
        )
        for h in holders:
            h.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        await eventually(
            released, timeout=2, interval=0.05, message="released after the last client"
        )
    finally:
        await nc.close()
        await admin.post(f"/v1/runs/{run_id}/cancel")


async def _equals(awaitable: Any, value: Any) -> bool:
    return await awaitable == value


async def test_unknown_and_hostile_run_ids(admin: httpx.AsyncClient) -> None:
    for run_id in [
        "00000000-0000-7000-8000-000000000000",
        "a.b",
        "*",
        ">",
        "x" * 300,
        "..%2F..%2Fetc",
    ]:
        response = await admin.get(f"/v1/runs/{run_id}/events")
        problem(response, 404, "not-found")
    problem(
        await admin.get("/v1/runs/abc/events", headers={"Last-Event-ID": "not-a-number"}),
        400,
        "bad-request",
    )
