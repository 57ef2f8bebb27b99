"""Registration and heartbeats against the registry's HTTP API (/agents/...).

The agent registers at start, heartbeats every ttl/3 with live metrics, registers again
when the registry says it does not know it (404) or took it off (409), and deregisters
(DELETE) on shutdown. Each process sends its own ``instance`` id (random at its start):
a restarted agent sends the same body otherwise, and only the new instance makes the
registry record the restart (a new ``agent.registered``), which is what tells executors
that marked the old process unreachable to try this one at once. The first heartbeat
follows each registration at once, so its load shows as soon as the agent does.
A registry that is down never stops the agent serving: it retries
with exponential backoff (1 s doubling to 30 s), and the executor keeps the tasks it has.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from chiffon.agent.application import AgentRuntime
from chiffon.core.logging import get_logger

log = get_logger(__name__)

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
REQUEST_TIMEOUT = 10.0


class RegistryRefused(Exception):
    """The registry answered 4xx to a registration: retrying the same will not help soon."""


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:300]
    return str(body)[:300]


class Registration:
    """Keeps this agent registered and alive in the registry until stopped."""

    def __init__(
        self,
        runtime: AgentRuntime,
        *,
        registry_url: str,
        credential: str,
        grpc_port: int,
        ttl_seconds: int,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._runtime = runtime
        self._grpc_port = grpc_port
        self._ttl = ttl_seconds
        self._client = httpx.AsyncClient(
            base_url=registry_url,
            headers={"Authorization": f"Bearer {credential}"},
            timeout=REQUEST_TIMEOUT,
            transport=transport,
        )
        self._sleep = sleep
        self.registered = False
        self.instance = secrets.token_hex(8)
        """This process's id: a new one at every start, the same for its whole life."""

    def registration_body(self) -> dict[str, Any]:
        identity = self._runtime.identity
        resources = self._runtime.resources()
        return {
            "agent_id": identity.agent_id,
            "agent_name": identity.name,
            "host": identity.host,
            "port": self._grpc_port,
            "ttl_seconds": self._ttl,
            "metadata": None,
            "grpc_address": f"{identity.host}:{self._grpc_port}",
            "capabilities": list(identity.capabilities),
            "labels": dict(identity.labels),
            "resources": {
                "cpu_cores": resources["cpu_cores"],
                "memory_bytes": resources["memory_bytes"],
                "gpus": [
                    {"name": gpu.name, "vram_bytes": gpu.vram_bytes}
                    for gpu in self._runtime.gpu.devices()
                ],
            },
            "max_concurrency": self._runtime.tasks.max_concurrency,
            "instance": self.instance,
        }

    def heartbeat_body(self) -> dict[str, Any]:
        load = list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]
        return {
            "load": load,
            "free_memory_bytes": float(psutil.virtual_memory().available),
            "running_tasks": self._runtime.tasks.running,
            "gpus": [
                {"utilization": gpu.utilization, "free_vram_bytes": gpu.free_vram_bytes}
                for gpu in self._runtime.gpu.live()
            ],
        }

    async def register(self) -> None:
        response = await self._client.post("/agents/register", json=self.registration_body())
        if response.status_code == 200:
            self.registered = True
            log.info("agent.registered", agent_id=self._runtime.identity.agent_id)
            return
        if 400 <= response.status_code < 500:
            raise RegistryRefused(f"{response.status_code}: {_problem(response)}")
        response.raise_for_status()
        raise httpx.HTTPError(f"unexpected status {response.status_code}")

    async def heartbeat(self) -> None:
        agent_id = self._runtime.identity.agent_id
        response = await self._client.post(
            f"/agents/{agent_id}/heartbeat", json=self.heartbeat_body()
        )
        if response.status_code in (404, 409):
            log.info("agent.registry_forgot", status=response.status_code)
            self.registered = False
            return
        if 400 <= response.status_code < 500:
            raise RegistryRefused(f"{response.status_code}: {_problem(response)}")
        response.raise_for_status()

    async def run(self, stopping: asyncio.Event) -> None:
        """Register, then heartbeat every ttl/3, until `stopping` is set; then deregister."""
        backoff = BACKOFF_START
        try:
            while not stopping.is_set():
                try:
                    registering = not self.registered
                    if registering:
                        await self.register()
                    if self.registered:  # at once after registering: live metrics shown
                        await self.heartbeat()
                    backoff = BACKOFF_START
                    # A registry that forgets the agent at once is not asked again at once.
                    delay = self._ttl / 3 if self.registered or registering else 0.0
                except (httpx.HTTPError, RegistryRefused) as error:
                    level = log.error if isinstance(error, RegistryRefused) else log.warning
                    level(
                        "agent.registry_unreachable"
                        if not isinstance(error, RegistryRefused)
                        else "agent.registry_refused",
                        error=str(error) or type(error).__name__,
                        retry_in=round(backoff, 1),
                    )
                    delay = backoff * (0.8 + 0.4 * random.random())  # noqa: S311 — jitter
                    backoff = min(backoff * 2, BACKOFF_MAX)
                if delay:
                    try:
                        await asyncio.wait_for(stopping.wait(), timeout=delay)
                    except TimeoutError:
                        pass
        finally:
            await self.deregister()
            await self._client.aclose()

    async def deregister(self) -> None:
        if not self.registered:
            return
        agent_id = self._runtime.identity.agent_id
        try:
            response = await self._client.delete(f"/agents/{agent_id}", timeout=3.0)
            log.info("agent.deregistered", status=response.status_code)
        except httpx.HTTPError as error:
            log.warning("agent.deregister_failed", error=str(error) or type(error).__name__)
        self.registered = False
