"""The audit API and ``chiffon audit`` on the package's stack: its gateway hosts the audit
index and the git export (``CHIFFON_AUDIT_GIT_DIR``); runs of a workflow of this module's
own are started and decided through the API with keys of its own, so what other modules
write does not blur the assertions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from chiffon.audit.gitexport import GitAuditTrail, record_path
from tests.support.cli import run_cli
from tests.support.fixtures import eventually

from .conftest import Stack
from .support import ADMIN_KEY, APPROVAL, Service

WORKFLOW = "audited-approval"


@dataclass
class AuditStack:
    gateway: Service
    env: dict[str, str]
    git_dir: Path
    keys: dict[str, str]
    approved: str  # a run approved with a comment: it succeeded
    rejected: str  # a run rejected: it failed

    def client(self, role: str | None = "viewer") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[role]}"} if role else {}
        return httpx.AsyncClient(base_url=self.gateway.url, headers=headers, timeout=30)


async def _decided_run(http: httpx.AsyncClient, approve: bool, comment: str) -> str:
    started = await http.post("/v1/runs", json={"workflow": WORKFLOW, "inputs": {"goal": "audit"}})
    assert started.status_code in (200, 201, 202), started.text
    run_id: str = started.json()["run_id"]

    async def waiting() -> bool:
        return (await http.get(f"/v1/runs/{run_id}")).json().get("status") == "waiting_approval"

    await eventually(waiting, timeout=60, message="the run waits for its approval")
    decided = await http.post(
        f"/v1/runs/{run_id}/approvals/sign_off", json={"approve": approve, "comment": comment}
    )
    assert decided.status_code in (200, 202), decided.text

    async def ended() -> bool:
        return (await http.get(f"/v1/runs/{run_id}")).json().get("status") in (
            "succeeded",
            "failed",
        )

    await eventually(ended, timeout=60, message="the run ends")
    return run_id


@pytest.fixture(scope="module")
async def audit_stack(stack: Stack) -> AuditStack:
    keys = {"admin": ADMIN_KEY}
    async with httpx.AsyncClient(
        base_url=stack.gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as admin:
        for role in ("viewer", "operator"):
            made = await admin.post("/v1/keys", json={"name": f"audit-{role}", "role": role})
            assert made.status_code == 201, made.text
            keys[role] = made.json()["key"]
        source = APPROVAL.replace("name: needs-approval", f"name: {WORKFLOW}")
        registered = await admin.post(
            "/v1/workflows", content=source, headers={"Content-Type": "application/yaml"}
        )
        assert registered.status_code in (200, 201), registered.text
    async with httpx.AsyncClient(
        base_url=stack.gateway.url,
        headers={"Authorization": f"Bearer {keys['operator']}"},
        timeout=30,
    ) as operator:

        async def listed() -> bool:
            return (await operator.get(f"/v1/workflows/{WORKFLOW}")).status_code == 200

        await eventually(listed, timeout=30, message="the workflow in the read model")
        approved, rejected = await asyncio.gather(
            _decided_run(operator, True, "<b>ship</b> it"),
            _decided_run(operator, False, "not on a Friday"),
        )
    return AuditStack(stack.gateway, stack.env, stack.audit_git_dir, keys, approved, rejected)


async def test_a_runs_audit_names_the_starter_key_version_calls_and_approver(
    audit_stack: AuditStack,
) -> None:
    async with audit_stack.client() as http:
        response = await http.get(f"/v1/runs/{audit_stack.approved}/audit")
        html = await http.get(f"/v1/runs/{audit_stack.approved}/audit", params={"format": "html"})
        unknown = await http.get("/v1/runs/no-such-run/audit")
    async with audit_stack.client(None) as anonymous:
        refused = await anonymous.get(f"/v1/runs/{audit_stack.approved}/audit")
    assert response.status_code == 200, response.text
    record = response.json()
    assert set(record) == {"run_id", "timeline"}
    timeline = record["timeline"]
    requested = timeline[0]
    assert requested["type"] == "run.requested"
    assert requested["actor"].startswith("api_key:") and requested["key_id"]
    assert requested["workflow"] == WORKFLOW and len(requested["digest"]) == 64
    calls = [e for e in timeline if e["type"] == "run.llm.called"]
    assert [c["node_id"] for c in calls] == ["plan", "done"]
    assert all(c["model"] == "chiffon/echo" and c["tokens"] > 0 for c in calls)
    decided = next(e for e in timeline if e["type"] == "run.approval.decided")
    assert (decided["actor"], decided["approved"], decided["comment"]) == (
        requested["actor"],
        True,
        "<b>ship</b> it",
    )
    assert timeline[-1]["type"] == "run.completed"

    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in html.headers["content-security-policy"]
    assert "&lt;b&gt;ship&lt;/b&gt; it" in html.text and "<b>ship" not in html.text
    assert (
        unknown.status_code == 404 and unknown.headers["content-type"] == "application/problem+json"
    )
    assert refused.status_code == 401


async def test_the_cli_prints_the_audit_as_text_and_html_and_failures_as_json(
    audit_stack: AuditStack, tmp_path: Path
) -> None:
    env = {
        **audit_stack.env,
        "CHIFFON_GATEWAY_URL": audit_stack.gateway.url,
        "CHIFFON_API_KEY": audit_stack.keys["viewer"],
    }
    code, text, err = await run_cli(env, "audit", audit_stack.approved)
    assert code == 0, err
    assert f"{WORKFLOW} v1" in text and "approved, comment: <b>ship</b> it" in text
    report = tmp_path / "audit.html"
    code, _, err = await run_cli(
        env, "audit", audit_stack.approved, "--format", "html", "-o", str(report)
    )
    assert code == 0, err
    assert report.read_text().startswith("<!doctype html>")
    code, _, err = await run_cli(env, "audit", "no-such-run")
    assert code == 4 and "no run" in err
    code, out, err = await run_cli(
        env, "audit", "failures", "--since", "1h", "--workflow", WORKFLOW, "--format", "json"
    )
    assert code == 0, err
    assert [g["error_type"] for g in json.loads(out)["groups"]] == ["rejected"]


async def _indexed(http: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def ended() -> bool:
        found[:] = (await http.get("/v1/audit", params={"run": run_id})).json()["events"]
        return any(e["type"] in ("run.completed", "run.failed") for e in found)

    await eventually(ended, timeout=30, message="the run's end in the audit index")
    return found


async def test_search_pages_through_exact_matches(audit_stack: AuditStack) -> None:
    async with audit_stack.client() as http:
        await _indexed(http, audit_stack.approved)
        await _indexed(http, audit_stack.rejected)
        # The module's operator key started both runs and decided both approvals.
        actor = (await http.get(f"/v1/runs/{audit_stack.approved}/audit")).json()["timeline"][0][
            "actor"
        ]
        decided = (
            await http.get("/v1/audit", params={"type": "run.approval.decided", "actor": actor})
        ).json()
        assert {e["run_id"] for e in decided["events"]} == {
            audit_stack.approved,
            audit_stack.rejected,
        }
        seen: list[int] = []
        params: dict[str, Any] = {"actor": actor, "limit": 2}
        while True:
            page = await http.get("/v1/audit", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [e["sequence"] for e in body["events"]]
            if body["next_cursor"] is None:
                assert "link" not in page.headers
                break
            assert 'rel="next"' in page.headers["link"]
            params["cursor"] = body["next_cursor"]
        assert len(seen) == 4 and seen == sorted(set(seen), reverse=True)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"actor": "%"}, 200),
        ({"actor": "*"}, 200),
        ({"type": "run.%"}, 200),
        ({"actor": "' OR 1=1 --"}, 200),
        ({"type": "x'; DROP TABLE audit_events; --"}, 200),
        ({"actor": "user:a\x00b"}, 422),
        ({"actor": "a" * 5000}, 422),
        ({"run": "../../etc/passwd"}, 422),
        ({"run": "%"}, 422),
        ({"from": "0001-01-01", "to": "9999-12-31"}, 200),
        ({"from": "0001-01-01T00:00:00+05:00"}, 200),
        ({"to": "9999-12-31T23:59:59-05:00"}, 200),
        ({"from": "yesterday"}, 422),
        ({"from": "2030-01-01", "to": "2020-01-01"}, 422),
        ({"cursor": "not-a-cursor"}, 422),
        ({"cursor": "YXVkaXQ6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, 422),
        ({"cursor": "%00"}, 422),
        ({"limit": "0"}, 422),
        ({"limit": "1000000"}, 422),
        ({"limit": "-1"}, 422),
    ],
)
async def test_hostile_filters_answer_4xx_or_an_empty_page(
    audit_stack: AuditStack, params: dict[str, str], status: int
) -> None:
    async with audit_stack.client() as http:
        response = await http.get("/v1/audit", params=params)
        assert response.status_code == status, response.text
        if status == 200:
            events = response.json()["events"]
            wide_open = "from" in params or "to" in params
            assert wide_open or events == []
        else:
            assert response.headers["content-type"] == "application/problem+json"
        assert (await http.get("/healthz")).status_code == 200  # still serving


@pytest.mark.parametrize(
    "params",
    [
        {"since": "forever"},
        {"since": "99999999d"},
        {"since": "-7d"},
        {"since": "7d", "workflow": "%"},
        {"agent": "a\x00"},
    ],
)
async def test_hostile_failure_filters_are_refused(
    audit_stack: AuditStack, params: dict[str, str]
) -> None:
    async with audit_stack.client() as http:
        response = await http.get("/v1/audit/failures", params=params)
    assert response.status_code == 422, response.text


async def test_failures_report_the_rejected_run_and_the_git_export_holds_both(
    audit_stack: AuditStack,
) -> None:
    async with audit_stack.client() as http:
        await _indexed(http, audit_stack.rejected)
        report = (
            await http.get("/v1/audit/failures", params={"since": "1h", "workflow": WORKFLOW})
        ).json()
        only_other = (await http.get("/v1/audit/failures", params={"workflow": "other"})).json()
        record = (await http.get(f"/v1/runs/{audit_stack.rejected}/audit")).json()
        approved = (await http.get(f"/v1/runs/{audit_stack.approved}/audit")).json()
    [group] = report["groups"]
    assert (group["error_type"], group["workflow"], group["failed_runs"]) == (
        "rejected",
        WORKFLOW,
        1,
    )
    assert group["recent_runs"] == [audit_stack.rejected]
    assert "not on a Friday" in group["last_message"]
    assert only_other["groups"] == []

    async def exported() -> bool:
        trail = GitAuditTrail(audit_stack.git_dir)
        try:
            return trail.contains(record_path(approved)) and trail.contains(record_path(record))
        finally:
            trail.close()

    await eventually(exported, timeout=30, message="both runs in the git export")
    trail = GitAuditTrail(audit_stack.git_dir)
    try:
        committed = trail.read(record_path(record))
    finally:
        trail.close()
    # The committed record is the API's, but for costs the cost service (absent here) adds.
    assert committed == record
