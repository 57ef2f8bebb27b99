"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright):
log in with a key, start a run of an example workflow with an approval, approve it,
watch it finish live, and keep a screenshot under test-artifacts/."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chiffon.devstack.servers import NatsServer, PostgresServer
from tests.integration.gateway.support import (
    ADMIN_KEY,
    EXAMPLES,
    REPO,
    Service,
    prepare_database,
    stack_environment,
    start_stack,
    stop_all,
)
from tests.support.fixtures import eventually

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
async def dashboard(
    nats_server: NatsServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Service]:
    namespace = "d" + uuid.uuid4().hex[:12]
    dsn = await prepare_database(postgres_server.dsn, namespace)
    gateway, executor = await start_stack(
        stack_environment(nats_server.url, dsn, namespace), tmp_path_factory.mktemp("dashboard")
    )
    try:
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as admin:
            source = (EXAMPLES / "parallel-approval.yaml").read_bytes()
            response = await admin.post(
                "/v1/workflows", content=source, headers={"Content-Type": "application/yaml"}
            )
            assert response.status_code in (200, 201), response.text

            async def listed() -> bool:  # the read model is eventually consistent
                shown = (await admin.get("/v1/workflows")).json()["workflows"]
                return any(w["name"] == "parallel-approval" for w in shown)

            await eventually(listed, timeout=30, message="the workflow in the read model")
        yield gateway
    finally:
        stop_all([gateway, executor])


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's chromium is not installed ({CHROMIUM} is missing), so the dashboard cannot be "
            "tested in a real browser. Install it with `./taskw deps:browser` (apt-get install chromium, "
            "as root on Debian/Ubuntu); Playwright's own browser download cannot work here.",
            pytrace=False,
        )


async def test_log_in_start_approve_and_watch_a_run_finish(
    dashboard: Service, tmp_path: Path
) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    async with httpx.AsyncClient(
        base_url=dashboard.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as admin:
        created = await admin.post("/v1/keys", json={"name": "alice-browser", "role": "operator"})
        operator = created.json()
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),  # fresh: nothing from earlier runs
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            # Not logged in: the dashboard sends us to the login form.
            await page.goto(dashboard.url + "/")
            await expect(page).to_have_url(f"{dashboard.url}/login?next=%2F")
            await page.fill("#api_key", "chf_not-a-real-key")
            await page.click("button[type=submit]")
            await expect(page.locator("[role=alert]")).to_contain_text("unknown API key")
            await page.fill("#api_key", operator["key"])
            await page.click("button[type=submit]")
            await expect(page.locator("h1")).to_have_text("Runs")
            cookie = next(c for c in await context.cookies() if c["name"] == "chiffon_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            await expect(page.locator(".who .badge")).to_contain_text("alice-browser · operator")
            # The key page is for admins only: an operator does not even see the link.
            assert await page.locator("nav a[href='/keys']").count() == 0

            # Start a run of the example from its workflow page.
            await page.click("text=Start a run")
            await page.click("a[href='/workflows/parallel-approval']")
            await expect(page.locator("pre.source")).to_contain_text("name: parallel-approval")
            await page.fill("input[name='in.goal']", "ship the beta")
            await page.click("#start-form button[type=submit]")
            await page.wait_for_url(f"{dashboard.url}/runs/*")
            run_id = page.url.rsplit("/", 1)[-1]

            # The timeline fills live from SSE; the approval box appears without a reload.
            approval = page.locator(".approval[data-node='sign_off']")
            await expect(approval).to_be_visible()
            await expect(
                page.locator("#timeline tr[data-type='run.approval.requested']")
            ).to_have_count(1)
            await approval.locator("input[name=comment]").fill("looks good")
            await approval.locator("button[value=approve]").click()

            await expect(page.locator("#run-status")).to_have_text("succeeded", timeout=30_000)
            await expect(page.locator("#timeline tr[data-type='run.completed']")).to_have_count(1)
            await expect(page.locator("#run-outputs")).to_contain_text("published")
            # People are named by their key's name, with the key id the events carry.
            who = f"alice-browser (api_key:{operator['id']})"
            await expect(page.locator("body")).to_contain_text(f"approved by {who}")
            await expect(page.locator("body")).to_contain_text(f"Requested by{who}")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

            # The runs list shows it as succeeded; the approval is recorded against the key.
            await page.goto(dashboard.url + "/?status=succeeded")
            await expect(page.locator(f"tr[data-run='{run_id}'] .status")).to_have_text("succeeded")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-runs.png"), full_page=True)
            assert not errors, errors
        finally:
            await context.close()

    async with httpx.AsyncClient(
        base_url=dashboard.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as admin:
        run = (await admin.get(f"/v1/runs/{run_id}")).json()
    decided = next(a for a in run["approvals"] if a["node_id"] == "sign_off")
    assert decided["approved"] is True and decided["decided_by"] == f"api_key:{operator['id']}"
    assert decided["comment"] == "looks good"
    assert run["requested_by"] == f"api_key:{operator['id']}"


async def test_forms_refuse_a_missing_csrf_token(dashboard: Service) -> None:
    """A form post without the page's CSRF token is refused, even with the cookie."""
    async with httpx.AsyncClient(base_url=dashboard.url, follow_redirects=False) as http:
        login = await http.post("/login", data={"api_key": ADMIN_KEY, "next": "/"})
        assert login.status_code == 303
        assert (
            "httponly" in login.headers["set-cookie"].lower()
            and "samesite=strict" in login.headers["set-cookie"].lower()
        )
        refused = await http.post(
            "/keys", data={"name": "sneaky", "role": "admin"}, headers={"Accept": "text/html"}
        )
        assert refused.status_code == 403 and "CSRF" in refused.text
        cross = await http.post(
            "/keys",
            data={"name": "sneaky", "role": "admin", "csrf": "x"},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        # The cookie authenticates reads of the API, never writes.
        assert (await http.get("/v1/me")).status_code == 200
        write = await http.post("/v1/keys", json={"name": "via-cookie", "role": "admin"})
        assert write.status_code == 401
