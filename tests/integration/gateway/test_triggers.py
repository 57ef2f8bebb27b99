"""``/v1/triggers`` and ``/v1/schedules`` through a real gateway: roles, bad input
refused at the edge (422, nothing sent), the trigger service's refusals mapped as the
budgets' are, write-only secrets (in the command, never in an answer or the gateway's
log), the hook's absolute URL, and the CLI over the same routes.

The trigger commands are answered by a stand-in served on the stack's command bus from
the test process, in the answer shapes of ``chiffon.commands.triggers``: the gateway's
side (checks, mapping, shaping, secrecy) is what is under test here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from chiffon.cli import exit_codes as codes
from chiffon.commands import CommandBus, CommandRefused
from chiffon.commands.model import Command, Refusal
from chiffon.commands.triggers import (
    CreateSchedule,
    CreateTrigger,
    DeleteSchedule,
    DisableTrigger,
    EnableTrigger,
    ListSchedules,
    ListTriggers,
    PauseSchedule,
    ReplayDeliveries,
    ResumeSchedule,
    SetTriggerSecrets,
    ShowTrigger,
)
from chiffon.events import CATALOG
from chiffon.eventstore import JetStreamEventStore
from tests.support.cli import run_cli

from .conftest import Stack, StartGateway, client
from .support import ADMIN_KEY
from .test_api import problem, start

PUBLIC_URL = "https://hooks.example.test/base"


def refuse(code: str, message: str, details: list[dict[str, Any]] | None = None) -> CommandRefused:
    return CommandRefused(Refusal(code=code, message=message, details=details or []))  # type: ignore[arg-type]


class StandIn:
    """The trigger service's command side, in memory: what the gateway gets back."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.triggers: dict[str, dict[str, Any]] = {}
        self.schedules: dict[str, dict[str, Any]] = {}

    def _trigger(self, name: str) -> dict[str, Any]:
        if name not in self.triggers:
            raise refuse("not_found", f"no trigger {name!r}")
        return self.triggers[name]

    def _schedule(self, name: str) -> dict[str, Any]:
        if name not in self.schedules:
            raise refuse("not_found", f"no schedule {name!r}")
        return self.schedules[name]

    async def handle(self, command: Any) -> dict[str, Any]:
        self.commands.append(command)
        now = datetime.now(UTC).isoformat()
        match command:
            case CreateTrigger():
                if command.workflow == "no-such-workflow":
                    raise refuse("not_found", "no workflow named 'no-such-workflow'")
                if command.inputs.get("title") == "not-a-pointer":
                    raise refuse(
                        "invalid",
                        "1 problem with the trigger",
                        [{"path": "inputs.title", "message": "not a JSON pointer"}],
                    )
                if command.trigger in self.triggers:
                    raise refuse("conflict", f"trigger {command.trigger!r} exists already")
                self.triggers[command.trigger] = {
                    "name": command.trigger,
                    "workflow": command.workflow,
                    "version": command.version,
                    "scheme": command.scheme,
                    "enabled": True,
                    "secrets": len(command.secrets),
                    "inputs": command.inputs,
                    "reply": {"output": command.reply["output"]} if command.reply else None,
                    "hook_path": f"/hooks/{command.trigger}",
                    "created_at": now,
                    "updated_at": now,
                    "deliveries": 0,
                    "last_delivery_at": None,
                }
                return self.triggers[command.trigger]
            case ListTriggers():
                return {"triggers": [self.triggers[k] for k in sorted(self.triggers)]}
            case ShowTrigger():
                return {
                    **self._trigger(command.trigger),
                    "recent_deliveries": [
                        {
                            "delivery": f"{command.trigger}-abc",
                            "delivery_id": "msg_1",
                            "received_at": now,
                            "run_id": "r-1",
                            "status": "run_requested",
                        }
                    ],
                }
            case DisableTrigger() | EnableTrigger():
                found = self._trigger(command.trigger)
                found["enabled"] = isinstance(command, EnableTrigger)
                return found
            case SetTriggerSecrets():
                found = self._trigger(command.trigger)
                found["secrets"] = len(command.secrets)
                return found
            case ReplayDeliveries():
                self._trigger(command.trigger)
                return {
                    "trigger": command.trigger,
                    "replayed": 1,
                    "runs": [{"delivery": f"{command.trigger}-abc", "run_id": "r-2"}],
                    "refused": [{"delivery": f"{command.trigger}-def", "error": "invalid: topic"}],
                }
            case CreateSchedule():
                if command.cron == "61 * * * *":
                    raise refuse("invalid", "bad cron", [{"path": "cron", "message": "minute 61"}])
                if command.schedule in self.schedules:
                    raise refuse("conflict", f"schedule {command.schedule!r} exists already")
                self.schedules[command.schedule] = {
                    **command.model_dump(exclude={"actor", "trace", "idempotency_key"}),
                    "name": command.schedule,
                    "paused": False,
                    "next_fire_times": ["2030-01-01T09:00:00Z", "2030-01-02T09:00:00Z"],
                    "last_fired_at": None,
                    "last_run_id": None,
                    "created_at": now,
                    "updated_at": now,
                }
                return self.schedules[command.schedule]
            case ListSchedules():
                return {"schedules": [self.schedules[k] for k in sorted(self.schedules)]}
            case PauseSchedule() | ResumeSchedule():
                found = self._schedule(command.schedule)
                found["paused"] = isinstance(command, PauseSchedule)
                found["next_fire_times"] = [] if found["paused"] else ["2030-01-01T09:00:00Z"]
                return found
            case DeleteSchedule():
                self._schedule(command.schedule)
                del self.schedules[command.schedule]
                return {"deleted": True, "name": command.schedule}
        raise refuse("invalid", f"unexpected {type(command).__name__}")


COMMANDS = (
    CreateTrigger,
    ListTriggers,
    ShowTrigger,
    DisableTrigger,
    EnableTrigger,
    SetTriggerSecrets,
    ReplayDeliveries,
    CreateSchedule,
    ListSchedules,
    PauseSchedule,
    ResumeSchedule,
    DeleteSchedule,
)


@contextlib.asynccontextmanager
async def serving(stack: Stack) -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    async with JetStreamEventStore.connect(
        stack.env["CHIFFON_NATS_URL"], CATALOG, namespace=stack.namespace
    ) as store:
        bus = CommandBus(store, stack.namespace)
        subscriptions = [await bus.serve(c, stand_in.handle) for c in COMMANDS]
        try:
            yield stand_in
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()


@pytest.fixture
async def trigger_service(stack: Stack) -> AsyncIterator[StandIn]:
    async with serving(stack) as stand_in:
        yield stand_in


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


SECRET = "whsec_" + "S3cr3tNeverShown" + uuid.uuid4().hex
TOKEN = "bot-token-" + uuid.uuid4().hex


async def test_triggers_roles_answers_and_secrets_never_shown(
    stack: Stack,
    keys: dict[str, str],
    start_gateway: StartGateway,
    trigger_service: StandIn,
) -> None:
    # A replica of its own, logging everything, hooks behind a public URL.
    gateway = await start_gateway(
        31, env={"CHIFFON_LOG_LEVEL": "debug", "CHIFFON_TRIGGER_PUBLIC_URL": PUBLIC_URL}
    )
    name = unique("gh")
    body = {
        "name": name,
        "workflow": "triage",
        "scheme": "telegram",
        "secret": SECRET,
        "inputs": {"title": "/message/text", "chat": "header:x-chat"},
        "reply": {"output": "answer", "token": TOKEN},
    }
    answers: list[str] = []
    async with client(gateway, keys["viewer"]) as viewer:
        problem(await viewer.post("/v1/triggers", json=body), 403, "forbidden")
    async with client(gateway, keys["operator"]) as operator:
        problem(await operator.post("/v1/triggers", json=body), 403, "forbidden")
        problem(await operator.post(f"/v1/triggers/{name}/disable"), 403, "forbidden")
    assert trigger_service.commands == []  # refused before anything was sent

    async with client(gateway, keys["admin"]) as admin:
        created = await admin.post("/v1/triggers", json=body)
        assert created.status_code == 201, created.text
        answers.append(created.text)
        trigger = created.json()
        assert trigger["hook_url"] == f"{PUBLIC_URL}/hooks/{name}"
        assert trigger["hook_path"] == f"/hooks/{name}"
        assert (trigger["scheme"], trigger["enabled"], trigger["secrets"]) == ("telegram", True, 1)
        assert trigger["reply"] == {"output": "answer"}
        sent = trigger_service.commands[-1]
        assert isinstance(sent, CreateTrigger)
        assert sent.secrets == [SECRET] and sent.reply == {"output": "answer", "token": TOKEN}
        assert sent.actor.kind == "api_key"

        again = await admin.post("/v1/triggers", json=body)
        answers.append(again.text)
        problem(again, 409, "conflict")
        missing = await admin.post(
            "/v1/triggers", json={**body, "name": unique("x"), "workflow": "no-such-workflow"}
        )
        answers.append(missing.text)
        problem(missing, 404, "not-found")
        invalid = await admin.post(
            "/v1/triggers",
            json={**body, "name": unique("x"), "inputs": {"title": "not-a-pointer"}},
        )
        answers.append(invalid.text)
        found = problem(invalid, 422, "validation-error")
        assert found["errors"][0]["path"] == "inputs.title"

        rotated = await admin.put(
            f"/v1/triggers/{name}/secrets", json={"secrets": ["whsec_new" + SECRET, SECRET]}
        )
        assert rotated.status_code == 200, rotated.text
        answers.append(rotated.text)
        assert rotated.json()["secrets"] == 2
        disabled = await admin.post(f"/v1/triggers/{name}/disable", json={"reason": "noisy"})
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False
        enabled = await admin.post(f"/v1/triggers/{name}/enable")
        assert enabled.status_code == 200 and enabled.json()["enabled"] is True
        problem(await admin.post(f"/v1/triggers/{unique('x')}/enable"), 404, "not-found")

    async with client(gateway, keys["viewer"]) as viewer:
        listed = await viewer.get("/v1/triggers")
        assert listed.status_code == 200, listed.text
        answers.append(listed.text)
        shown = {t["name"]: t for t in listed.json()["triggers"]}
        assert shown[name]["hook_url"] == f"{PUBLIC_URL}/hooks/{name}"
        one = await viewer.get(f"/v1/triggers/{name}")
        assert one.status_code == 200, one.text
        answers.append(one.text)
        assert one.json()["recent_deliveries"][0]["delivery_id"] == "msg_1"
        problem(await viewer.post(f"/v1/triggers/{name}/replay"), 403, "forbidden")

    async with client(gateway, keys["operator"]) as operator:
        replayed = await operator.post(
            f"/v1/triggers/{name}/replay",
            json={"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z",
                  "workflow": "triage", "version": 2},
        )  # fmt: skip
        assert replayed.status_code == 200, replayed.text
        assert replayed.json() == {
            "trigger": name,
            "replayed": 1,
            "runs": [{"delivery": f"{name}-abc", "run_id": "r-2"}],
            "refused": [{"delivery": f"{name}-def", "error": "invalid: topic"}],
        }
        sent = trigger_service.commands[-1]
        assert isinstance(sent, ReplayDeliveries)
        assert sent.from_ == datetime(2026, 1, 1, tzinfo=UTC) and sent.version == 2

    for text in answers:
        assert SECRET not in text and TOKEN not in text and "S3cr3t" not in text
    await asyncio.sleep(0)  # the log is written synchronously; nothing to wait for
    log = gateway.log.read_text(errors="replace")
    assert "S3cr3t" not in log and TOKEN not in log


# (body change, where the 422 points): each refused at the edge, nothing sent.
HOSTILE_TRIGGERS = [
    ({"name": "Has Caps"}, "body.name"),
    ({"name": "gh\n"}, "body.name"),
    ({"name": "../etc"}, "body.name"),
    ({"name": "x" * 64}, "body.name"),
    ({"workflow": "no/slash"}, "body.workflow"),
    ({"scheme": "hmac-md5"}, "body.scheme"),
    ({"secret": "whsec_\x07bell-0123456789"}, "body.secret"),
    ({"secret": "x" * 1001}, "body.secret"),
    ({"secret": "too-short"}, "body.secret"),
    ({"secret": None}, "body"),  # no secret at all
    ({"secrets": ["a" * 16] * 6}, "body.secrets"),
    ({"secrets": ["a" * 16]}, "body"),  # secret and secrets both
    ({"verify_token": "t\r\nX-Evil: 1"}, "body.verify_token"),
    ({"inputs": {"title": "/a\x1b[31m"}}, "body.inputs.title"),
    ({"inputs": {"bad key": "/a"}}, "body.inputs.bad key.[key]"),
    ({"inputs": {"t": "/" + "a" * 500}}, "body.inputs.t"),
    ({"reply": {"output": "x", "token": "\x00"}}, "body.reply.token"),
    ({"colour": "red"}, "body.colour"),
]
HOSTILE_SCHEDULES = [
    ({"name": "Nightly!"}, "body.name"),
    ({"cron": "0 9 * * *\n"}, "body.cron"),
    ({"cron": "*" * 121}, "body.cron"),
    ({"timezone": "Europe/../../etc"}, "body.timezone"),
    ({"timezone": "Europe/Berlin\x00"}, "body.timezone"),
    ({"overlap": "queue_all"}, "body.overlap"),
    ({"jitter_seconds": -1}, "body.jitter_seconds"),
    ({"jitter_seconds": 3601}, "body.jitter_seconds"),
    ({"catchup_window_seconds": 8 * 86400}, "body.catchup_window_seconds"),
    ({"inputs": {"x": "a\x00b"}}, "body"),
]


async def test_hostile_input_is_422_at_the_edge_and_nothing_is_sent(
    stack: Stack, keys: dict[str, str], trigger_service: StandIn
) -> None:
    trigger = {
        "name": "ok",
        "workflow": "triage",
        "scheme": "standard-webhooks",
        "secret": "s" * 16,
    }
    schedule = {"name": "ok", "workflow": "triage", "cron": "0 9 * * *"}
    async with client(stack.gateway, keys["admin"]) as admin:
        for change, where in HOSTILE_TRIGGERS:
            response = await admin.post("/v1/triggers", json={**trigger, **change})
            found = problem(response, 422, "validation-error")
            paths = [e["path"] for e in found["errors"]]
            assert any(p.startswith(where) for p in paths), (change, found)
            assert SECRET not in response.text and "whsec_\x07" not in response.text
        for change, where in HOSTILE_SCHEDULES:
            response = await admin.post("/v1/schedules", json={**schedule, **change})
            found = problem(response, 422, "validation-error")
            paths = [e["path"] for e in found["errors"]]
            assert any(p.startswith(where) for p in paths), (change, found)
        for path in ("/v1/triggers/Bad%20Name", "/v1/triggers/a%0A", "/v1/schedules/" + "x" * 64):
            problem(await admin.get(path), 422, "validation-error")
        replay = await admin.post(
            "/v1/triggers/ok/replay",
            json={"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        )
        problem(replay, 422, "validation-error")
        naive = await admin.post("/v1/triggers/ok/replay", json={"from": "2026-02-01T00:00:00"})
        problem(naive, 422, "validation-error")
        problem(await admin.put("/v1/triggers/ok/secrets", json={"secrets": []}), 422,
                "validation-error")  # fmt: skip
        wrong_type = await admin.post(
            "/v1/triggers", content=b"name=x", headers={"Content-Type": "text/plain"}
        )
        problem(wrong_type, 415, "unsupported-media-type")
    assert trigger_service.commands == []


async def test_schedules_create_list_pause_resume_delete(
    stack: Stack, keys: dict[str, str], trigger_service: StandIn
) -> None:
    name = unique("nightly")
    body = {
        "name": name,
        "workflow": "report",
        "cron": "0 9 * * MON-FRI",
        "timezone": "Europe/Berlin",
        "inputs": {"topic": "owls", "n": 3},
        "jitter_seconds": 30,
        "overlap": "buffer_one",
        "catchup_window_seconds": 600,
    }
    async with client(stack.gateway, keys["operator"]) as operator:
        problem(await operator.post("/v1/schedules", json=body), 403, "forbidden")
    async with client(stack.gateway, keys["admin"]) as admin:
        created = await admin.post("/v1/schedules", json=body)
        assert created.status_code == 201, created.text
        schedule = created.json()
        assert {k: schedule[k] for k in body} == body
        assert schedule["next_fire_times"][0] == "2030-01-01T09:00:00Z"
        problem(await admin.post("/v1/schedules", json=body), 409, "conflict")
        bad = problem(
            await admin.post("/v1/schedules", json={**body, "name": unique("x"), "cron": "61 * * * *"}),
            422, "validation-error",
        )  # fmt: skip
        assert bad["errors"] == [{"path": "cron", "line": None, "message": "minute 61"}]
        paused = await admin.post(f"/v1/schedules/{name}/pause", json={"reason": "holiday"})
        assert paused.status_code == 200 and paused.json()["paused"] is True
        assert paused.json()["next_fire_times"] == []
    async with client(stack.gateway, keys["viewer"]) as viewer:
        listed = await viewer.get("/v1/schedules")
        assert listed.status_code == 200, listed.text
        assert name in {s["name"] for s in listed.json()["schedules"]}
        one = await viewer.get(f"/v1/schedules/{name}")
        assert one.status_code == 200 and one.json()["paused"] is True
        problem(await viewer.get(f"/v1/schedules/{unique('x')}"), 404, "not-found")
        problem(await viewer.delete(f"/v1/schedules/{name}"), 403, "forbidden")
    async with client(stack.gateway, keys["admin"]) as admin:
        resumed = await admin.post(f"/v1/schedules/{name}/resume")
        assert resumed.status_code == 200 and resumed.json()["paused"] is False
        deleted = await admin.delete(f"/v1/schedules/{name}")
        assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "name": name}
        problem(await admin.delete(f"/v1/schedules/{name}"), 404, "not-found")


async def test_without_a_trigger_service_the_routes_answer_503(stack: Stack) -> None:
    async with client(stack.gateway, ADMIN_KEY) as admin:
        for response in (
            await admin.get("/v1/triggers"),
            await admin.get("/v1/schedules"),
            await admin.post(
                "/v1/triggers",
                json={"name": "off", "workflow": "w", "scheme": "telegram", "secret": SECRET},
            ),
        ):
            found = problem(response, 503, "unavailable")
            assert response.headers["retry-after"] and SECRET not in response.text
            assert "trigger" in found["detail"]


async def test_cli_creates_shows_and_lists(stack: Stack, trigger_service: StandIn) -> None:
    env = {
        **stack.env,
        "CHIFFON_GATEWAY_URL": stack.gateway.url,
        "CHIFFON_API_KEY": ADMIN_KEY,
        "HOOK_SECRET": SECRET,
    }
    name, nightly = unique("cli"), unique("nightly")
    create = ("triggers", "create", name, "--workflow", "triage", "--secret-env", "HOOK_SECRET")
    code, out, err = await run_cli(
        env, *create, "--scheme", "standard-webhooks", "--input", "title=/issue/title"
    )
    assert code == 0, err
    assert f"trigger {name} created" in out and f"/hooks/{name}" in out
    sent = trigger_service.commands[-1]
    assert isinstance(sent, CreateTrigger) and sent.secrets == [SECRET]
    assert sent.inputs == {"title": "/issue/title"}
    code, out, err = await run_cli(env, "triggers", "show", name)
    assert code == 0 and "hook base" in out and "msg_1" in out, err
    assert SECRET not in out
    code, out, err = await run_cli(env, *create, "--scheme", "telegram")
    assert code == codes.CONFLICT and "exists already" in err, (out, err)
    code, out, err = await run_cli(
        env, "schedules", "create", nightly, "--workflow", "report", "--cron", "30 2 * * *",
        "--timezone", "Europe/Berlin", "--input", "n=3", "--overlap", "buffer_one",
    )  # fmt: skip
    assert code == 0 and "next: 2030-01-01 09:00:00 UTC" in out, err
    assert trigger_service.schedules[nightly]["inputs"] == {"n": 3}
    code, out, err = await run_cli(env, "schedules", "list")
    assert code == 0 and nightly in out and "2030-01-02 09:00:00" in out, err


async def test_dashboard_triggers_page_and_a_runs_trigger(
    stack: Stack, keys: dict[str, str], trigger_service: StandIn, workflows: list[str]
) -> None:
    hostile = "<script>alert(1)</script>"
    trigger_service.triggers["evil"] = {
        "name": "evil",
        "workflow": hostile,
        "scheme": "telegram",
        "enabled": False,
        "secrets": 1,
        "hook_path": "/hooks/evil",
        "deliveries": 3,
        "last_delivery_at": "2026-12-07T10:00:00Z",
    }
    trigger_service.schedules["nightly"] = {
        "name": "nightly",
        "workflow": "report",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "paused": True,
        "next_fire_times": [],
        "last_run_id": "r-9",
        "last_fired_at": "2026-12-07T01:30:00Z",
    }
    cookie = {"Cookie": f"chiffon_session={ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=stack.gateway.url, headers=cookie) as browser:
        page = await browser.get("/triggers")
        assert page.status_code == 200, page.text
        html = page.text
        assert '<a href="/triggers" aria-current="page">Triggers</a>' in html
        row = html.split('id="trigger-evil"')[1].split("</tr>")[0]
        assert "disabled" in row and ">3<" in row and "/hooks/evil" in row
        assert hostile not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        schedule = html.split('id="schedule-nightly"')[1].split("</tr>")[0]
        assert "30 2 * * *" in schedule and "Europe/Berlin" in schedule
        assert "paused" in schedule and 'href="/runs/r-9"' in schedule

    async with client(stack.gateway, keys["operator"]) as http:
        run_id = await start(http)
        shown = (await http.get(f"/v1/runs/{run_id}")).json()
    key_id = shown["trigger"]["id"]
    assert shown["trigger"] == {"kind": "api", "id": key_id}
    async with httpx.AsyncClient(base_url=stack.gateway.url, headers=cookie) as browser:
        run_page = (await browser.get(f"/runs/{run_id}")).text
    assert 'id="run-trigger" data-kind="api"' in run_page and key_id in run_page


async def test_dashboard_says_when_the_trigger_service_is_down(stack: Stack) -> None:
    cookie = {"Cookie": f"chiffon_session={ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=stack.gateway.url, headers=cookie) as browser:
        page = await browser.get("/triggers")
    assert page.status_code == 200, page.text
    assert "Triggers are not available" in page.text
    assert "Schedules are not available" in page.text
