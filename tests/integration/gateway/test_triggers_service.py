"""``/v1/triggers`` and ``/v1/schedules`` end to end: the real gateway and the real
trigger service. A trigger made through the API takes a signed delivery at its
``hook_url``, the run it starts names its trigger and delivery, the trigger shows the
delivery, a replay starts one new run; a schedule is made, listed with its next fire
times, paused, resumed and deleted. The secret is in no answer and in neither service's
log (both at debug)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from standardwebhooks import Webhook

from chiffon.devstack.ports import free_port
from chiffon.events.triggers import delivery_aggregate_id
from tests.support.cli import run_cli
from tests.support.fixtures import eventually

from .conftest import Stack, StartGateway, client
from .support import Service, start_service, stop_all, wait_ready
from .test_api import problem

SECRET = "whsec_" + "c2VjcmV0LW5ldmVyLXNob3du" + uuid.uuid4().hex[:8]  # 24 bytes
NEW_SECRET = "whsec_" + base64.b64encode(b"the-rotated-secret-24-by").decode()


@pytest.fixture(scope="module")
async def trigger_process(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """A trigger service on the stack, for the module (stopped at its end: the other
    modules' tests want none, or a stand-in of their own)."""
    service = start_service(
        "chiffon.trigger",
        "trigger-1",
        {
            **stack.env,
            "CHIFFON_LOG_LEVEL": "debug",
            "CHIFFON_TRIGGER_SECRETS_KEY": Fernet.generate_key().decode(),
            "CHIFFON_SCHEDULE_POLL_SECONDS": "1",
        },
        tmp_path_factory.mktemp("trigger"),
        free_port(),
    )
    try:
        await wait_ready(service)
        yield service
    finally:
        stop_all([service])


async def test_a_trigger_made_through_the_api_starts_a_run_that_names_it(
    stack: Stack,
    keys: dict[str, str],
    workflows: list[str],
    start_gateway: StartGateway,
    trigger_process: Service,
) -> None:
    gateway = await start_gateway(
        32,
        env={"CHIFFON_LOG_LEVEL": "debug", "CHIFFON_TRIGGER_PUBLIC_URL": trigger_process.url},
    )
    name = "gh-" + uuid.uuid4().hex[:8]
    answers: list[str] = []
    async with client(gateway, keys["admin"]) as admin:
        created = await admin.post(
            "/v1/triggers",
            json={
                "name": name,
                "workflow": "bench-three",
                "scheme": "standard-webhooks",
                "secret": SECRET,
                "inputs": {"topic": "/issue/title"},
            },
        )
        assert created.status_code == 201, created.text
        answers.append(created.text)
        trigger = created.json()
        assert trigger["hook_url"] == f"{trigger_process.url}/hooks/{name}"
        assert (trigger["enabled"], trigger["secrets"], trigger["deliveries"]) == (True, 1, 0)
        problem(await admin.get("/v1/triggers/no-such-trigger"), 404, "not-found")
        again = await admin.post(
            "/v1/triggers",
            json={
                "name": name,
                "workflow": "bench-three",
                "scheme": "telegram",
                "secret": "y" * 32,
            },
        )
        problem(again, 409, "conflict")

    # A delivery, signed as a sender would, at the hook URL the API gave.
    body = json.dumps({"issue": {"title": "owls"}}).encode()
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_1", now, body),
    }
    async with httpx.AsyncClient(timeout=30) as sender:
        delivered = await sender.post(trigger["hook_url"], content=body, headers=headers)
    assert delivered.status_code == 202, delivered.text
    run_id = delivered.json()["run_id"]
    delivery = delivery_aggregate_id(name, "msg_1")
    assert delivered.json()["delivery"] == delivery

    async with client(gateway, keys["viewer"]) as viewer:

        async def started() -> dict[str, Any] | None:
            response = await viewer.get(f"/v1/runs/{run_id}")
            return response.json() if response.status_code == 200 else None

        run = await eventually(started, timeout=30, message="the delivery's run")
        assert run["trigger"] == {"kind": "webhook", "id": delivery}
        assert run["inputs"] == {"topic": "owls"}
        env = {
            **stack.env,
            "CHIFFON_GATEWAY_URL": gateway.url,
            "CHIFFON_API_KEY": keys["viewer"],
        }
        code, out, err = await run_cli(env, "runs", "show", run_id)
        assert code == 0 and f"trigger    webhook {delivery}" in out, err

        async def shown() -> dict[str, Any] | None:
            response = await viewer.get(f"/v1/triggers/{name}")
            assert response.status_code == 200, response.text
            found = response.json()
            return found if found["recent_deliveries"] else None

        found = await eventually(shown, timeout=30, message="the delivery on the trigger")
        answers.append(json.dumps(found))
        assert found["recent_deliveries"][0]["delivery"] == delivery
        assert found["recent_deliveries"][0]["delivery_id"] == "msg_1"
        listed = await viewer.get("/v1/triggers")
        answers.append(listed.text)
        assert name in {t["name"] for t in listed.json()["triggers"]}

    async with client(gateway, keys["operator"]) as operator:
        since = (now - timedelta(minutes=5)).isoformat()
        replayed = await operator.post(f"/v1/triggers/{name}/replay", json={"from": since})
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["replayed"] == 1
        assert replayed.json()["runs"][0]["delivery"] == delivery
        assert replayed.json()["runs"][0]["run_id"] != run_id

    async with client(gateway, keys["admin"]) as admin:
        rotated = await admin.put(
            f"/v1/triggers/{name}/secrets", json={"secrets": [NEW_SECRET, SECRET]}
        )
        assert rotated.status_code == 200 and rotated.json()["secrets"] == 2, rotated.text
        answers.append(rotated.text)
        disabled = await admin.post(f"/v1/triggers/{name}/disable", json={"reason": "test"})
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False

    for text in answers:
        assert SECRET not in text and "c2VjcmV0LW5ldmVyLXNob3du" not in text
    for log in (gateway.log, trigger_process.log):
        assert "c2VjcmV0LW5ldmVyLXNob3du" not in log.read_text(errors="replace"), log


async def test_a_schedule_made_through_the_api(
    stack: Stack, keys: dict[str, str], workflows: list[str], trigger_process: Service
) -> None:
    name = "daily-" + uuid.uuid4().hex[:8]
    async with client(stack.gateway, keys["admin"]) as admin:
        created = await admin.post(
            "/v1/schedules",
            json={
                "name": name,
                "workflow": "bench-three",
                "cron": "30 2 * * *",
                "timezone": "Europe/Berlin",
                "inputs": {"topic": "owls"},
                "overlap": "buffer_one",
            },
        )
        assert created.status_code == 201, created.text
        schedule = created.json()
        assert (schedule["cron"], schedule["timezone"], schedule["paused"]) == (
            "30 2 * * *",
            "Europe/Berlin",
            False,
        )
        upcoming = [datetime.fromisoformat(t) for t in schedule["next_fire_times"]]
        assert len(upcoming) == 5 and upcoming == sorted(upcoming)
        assert all(t.astimezone(UTC).hour in (0, 1) and t.minute == 30 for t in upcoming)
        bad = await admin.post(
            "/v1/schedules",
            json={"name": name + "x", "workflow": "bench-three", "cron": "61 * * * *"},
        )
        assert "cron" in str(problem(bad, 422, "validation-error")["errors"])
        problem(await admin.post("/v1/schedules", json={**schedule, "next_fire_times": []}), 422,
                "validation-error")  # fmt: skip
        paused = await admin.post(f"/v1/schedules/{name}/pause", json={"reason": "test"})
        assert paused.status_code == 200, paused.text
        assert paused.json()["paused"] is True and paused.json()["next_fire_times"] == []
        one = await admin.get(f"/v1/schedules/{name}")
        assert one.status_code == 200 and one.json()["paused"] is True
        resumed = await admin.post(f"/v1/schedules/{name}/resume")
        assert resumed.status_code == 200 and resumed.json()["next_fire_times"]
        deleted = await admin.delete(f"/v1/schedules/{name}")
        assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "name": name}
        problem(await admin.get(f"/v1/schedules/{name}"), 404, "not-found")
