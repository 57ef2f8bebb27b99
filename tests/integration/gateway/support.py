"""Real gateway and executor processes for the gateway's tests and benchmark, and the
small SSE client the tests follow runs with."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chiffon.events.runs import RUN_ENDINGS

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
ADMIN_KEY = "chf_test-bootstrap-admin-key-0123456789"
ENDINGS = RUN_ENDINGS

THREE_NODES = """\
name: bench-three
version: 1
inputs: {topic: {type: string}}
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: "facts about {topic}", output: {facts: "list[string]"}}
  - {id: b, type: llm, prompt: "outline {facts}", output: {outline: string}}
  - {id: c, type: llm, prompt: "write {outline}", output: {text: string}}
edges:
  - {from: a, to: b}
  - {from: b, to: c}
"""

APPROVAL = """\
name: needs-approval
version: 1
inputs: {goal: {type: string}}
defaults: {model: chiffon/echo}
nodes:
  - {id: plan, type: llm, prompt: "plan {goal}", output: {plan: string}}
  - {id: sign_off, type: approval, message: "Ship {plan}?"}
  - {id: done, type: llm, prompt: "announce {plan}", output: {note: string}}
edges:
  - {from: plan, to: sign_off}
  - {from: sign_off, to: done}
"""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def terminate(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15) -> int | None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
            except ProcessLookupError:
                pass
        return self.process.returncode


def stop_all(services: list[Service], timeout: float = 15) -> None:
    """SIGTERM every one at once, then wait (a slow one does not delay the others)."""
    for service in services:
        service.terminate()
    for service in services:
        service.stop(timeout)


def start_service(module: str, name: str, env: dict[str, str], log_dir: Path, port: int) -> Service:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**env, "CHIFFON_PORT": str(port), "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, process, port, log)


async def wait_ready(service: Service, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise AssertionError(
                    f"{service.name} exited with {service.process.returncode}:\n{service.tail()}"
                )
            try:
                if (await http.get(f"{service.url}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{service.name} not ready within {timeout}s:\n{service.tail()}")


async def prepare_database(postgres_dsn: str, namespace: str) -> str:
    """A fresh database named ``namespace`` with every migration; its DSN."""
    from tests.support.databases import migrated_database

    return await migrated_database(postgres_dsn, namespace)


def stack_environment(nats_url: str, dsn: str, namespace: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CHIFFON_NATS_URL=nats_url,
        CHIFFON_DATABASE_URL=dsn,
        CHIFFON_NAMESPACE=namespace,
        CHIFFON_LOG_FORMAT="json",
    )
    return env


def gateway_env(base: dict[str, str]) -> dict[str, str]:
    return {
        **base,
        "CHIFFON_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "CHIFFON_RATE_LIMIT_PER_SECOND": "0",
        "CHIFFON_SSE_KEEPALIVE_SECONDS": "1",
        "CHIFFON_LOG_LEVEL": "warning",
    }


async def start_stack(env: dict[str, str], log_dir: Path) -> tuple[Service, Service]:
    """One executor and one gateway, started together; (gateway, executor) once ready."""
    from chiffon.devstack.ports import free_port

    executor = start_service(
        "chiffon.executor",
        "executor-1",
        {**env, "CHIFFON_REPLICA": "1", "CHIFFON_LOG_LEVEL": "warning"},
        log_dir,
        free_port(),
    )
    gateway = start_service("chiffon.gateway", "gateway-0", gateway_env(env), log_dir, free_port())
    try:
        await wait_ready(executor)
        await wait_ready(gateway)
    except BaseException:
        stop_all([gateway, executor])
        raise
    return gateway, executor


# -- SSE --------------------------------------------------------------------------------


@dataclass
class SseEvent:
    id: int
    event: str
    data: dict[str, Any]
    received: float = field(default_factory=time.monotonic)


async def sse_events(
    http: httpx.AsyncClient,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    comments: list[str] | None = None,
) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream response; yields each message as it arrives."""
    async with http.stream(
        "GET", url, headers=headers, timeout=httpx.Timeout(60, read=60)
    ) as response:
        if response.status_code != 200:
            body = await response.aread()
            raise AssertionError(f"SSE {url}: {response.status_code} {body[:500]!r}")
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    yield SseEvent(
                        int(fields.get("id", "0")),
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                fields = {}
            elif line.startswith(":"):
                if comments is not None:
                    comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                fields[name] = (
                    fields[name] + "\n" + value if name == "data" and name in fields else value
                )


async def collect(
    http: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None, timeout: float = 30
) -> list[SseEvent]:
    events: list[SseEvent] = []

    async def run() -> None:
        async for event in sse_events(http, url, headers=headers):
            events.append(event)

    await asyncio.wait_for(run(), timeout)
    return events
