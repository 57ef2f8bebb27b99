"""``ChiffonClient`` over the gateway's REST and SSE API (what the CLI uses by default).

Where the gateway is and which key to use, first found wins:

1. ``--gateway-url`` / ``--api-key`` (they set the variables below for the command),
2. ``CHIFFON_GATEWAY_URL`` and ``CHIFFON_API_KEY`` (or ``CHIFFON_API_KEY_FILE``),
3. the dev stack's ``.chiffon/config.toml`` (``gateway_url``, ``api_key_file``), found
   in this folder or a parent, or named by ``CHIFFON_CONFIG_FILE``.

Following a run's events resumes after a dropped connection with ``Last-Event-ID``,
so nothing is lost or printed twice, whichever gateway replica answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from chiffon.cli.client import (
    ChiffonClient,
    ClientError,
    Conflict,
    InvalidRequest,
    NotFound,
    RunEvent,
    Unavailable,
)
from chiffon.cli.config import find_config_file

# The read models' pydantic classes (0.3 s of CPU to import) and the event catalog (0.35 s)
# are imported by the calls that use them: most commands never do, and pay neither.
if TYPE_CHECKING:
    from chiffon.readmodels.views import (
        ApprovalPublic,
        RunPublic,
        RunSummary,
        WorkflowPublic,
        WorkflowSummary,
    )

PROBLEMS = "https://chiffon.dev/problems/"


class Unauthorized(ClientError):
    code = "unauthorized"


class Forbidden(ClientError):
    code = "forbidden"


class RateLimited(Unavailable):
    pass


@dataclass(frozen=True)
class GatewayConfig:
    url: str
    api_key: str | None
    source: str  # where the settings came from, for error messages


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _read_key_file(path: str | os.PathLike[str]) -> str | None:
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError:
        return None


def gateway_config() -> GatewayConfig | None:
    """The gateway to talk to, or None when none is configured anywhere."""
    url = os.environ.get("CHIFFON_GATEWAY_URL")
    key = os.environ.get("CHIFFON_API_KEY") or None
    if key is None and os.environ.get("CHIFFON_API_KEY_FILE"):
        key = _read_key_file(os.environ["CHIFFON_API_KEY_FILE"])
    source = "the environment"
    if url is None or key is None:
        path = find_config_file()
        if path is not None and path.is_file():
            data = _read_toml(path)
            if url is None and isinstance(data.get("gateway_url"), str):
                url, source = data["gateway_url"], str(path)
            if key is None:
                if isinstance(data.get("api_key"), str):
                    key = data["api_key"]
                elif isinstance(data.get("api_key_file"), str):
                    key = _read_key_file(data["api_key_file"])
    if not url:
        return None
    return GatewayConfig(url.rstrip("/"), key, source)


def _error(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
    details = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    status = response.status_code
    if status == 401:
        return Unauthorized(f"{message} (set CHIFFON_API_KEY or pass --api-key)")
    if status == 403:
        return Forbidden(message)
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message, details)
    if status == 429:
        return RateLimited(f"{message}; retry in {response.headers.get('retry-after', '?')}s")
    if status in (400, 413, 415, 422):
        return InvalidRequest(message, details)
    if status >= 500:
        return Unavailable(message)
    return ClientError(message, details)


class GatewayClient(ChiffonClient):
    def __init__(
        self,
        url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_reconnect_delay: float = 5.0,
    ) -> None:
        headers = {"User-Agent": "chiffon-cli", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.max_reconnect_delay = max_reconnect_delay
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Unavailable(f"the gateway at {self.url} did not answer in time") from None
        except httpx.HTTPError as error:
            raise Unavailable(
                f"cannot reach the gateway at {self.url}: {error} (is the stack up? `chiffon up`)"
            ) from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._request(method, path, **kwargs)).json()

    async def _maybe(self, path: str, **kwargs: Any) -> Any:
        try:
            return await self._json("GET", path, **kwargs)
        except NotFound:
            return None

    # -- workflows --

    async def register_workflow(
        self, source: str, *, source_format: str = "yaml"
    ) -> dict[str, Any]:
        media = "application/json" if source_format == "json" else "application/yaml"
        result: dict[str, Any] = await self._json(
            "POST", "/v1/workflows", content=source.encode(), headers={"Content-Type": media}
        )
        return result

    async def list_workflows(self) -> list[WorkflowSummary]:
        from chiffon.readmodels.views import WorkflowSummary

        body = await self._json("GET", "/v1/workflows")
        return [WorkflowSummary.model_validate(w) for w in body["workflows"]]

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowPublic | None:
        from chiffon.readmodels.views import WorkflowPublic

        params = {"version": version} if version is not None else None
        body = await self._maybe(f"/v1/workflows/{_segment(name)}", params=params)
        return WorkflowPublic.model_validate(body) if body is not None else None

    # -- runs --

    async def start_run(
        self,
        workflow: str,
        *,
        inputs: dict[str, Any],
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body: dict[str, Any] = {"workflow": workflow, "inputs": inputs}
        if version is not None:
            body["version"] = version
        result: dict[str, Any] = await self._json("POST", "/v1/runs", json=body, headers=headers)
        return result

    async def get_run(self, run_id: str) -> RunPublic | None:
        from chiffon.readmodels.views import RunPublic

        body = await self._maybe(f"/v1/runs/{_segment(run_id)}")
        return RunPublic.model_validate(body) if body is not None else None

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[RunSummary], str | None]:
        from chiffon.readmodels.views import RunSummary

        params: dict[str, Any] = {"limit": limit}
        for name, value in (("status", status), ("workflow", workflow), ("cursor", cursor)):
            if value is not None:
                params[name] = value
        body = await self._json("GET", "/v1/runs", params=params)
        return [RunSummary.model_validate(r) for r in body["runs"]], body.get("next_cursor")

    async def cancel_run(self, run_id: str, *, reason: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "POST", f"/v1/runs/{_segment(run_id)}/cancel", json={"reason": reason}
        )
        return result

    async def approve(
        self, run_id: str, node_id: str, *, approve: bool = True, comment: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "POST",
            f"/v1/runs/{_segment(run_id)}/approvals/{_segment(node_id)}",
            json={"approve": approve, "comment": comment},
        )
        return result

    async def list_pending_approvals(self) -> list[ApprovalPublic]:
        from chiffon.readmodels.views import ApprovalPublic

        body = await self._json("GET", "/v1/approvals")
        return [ApprovalPublic.model_validate(a) for a in body["approvals"]]

    # -- keys (admin) --

    async def create_key(
        self, name: str, role: str, *, expires_at: datetime | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "role": role}
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        result: dict[str, Any] = await self._json("POST", "/v1/keys", json=body)
        return result

    async def list_keys(self) -> list[dict[str, Any]]:
        body = await self._json("GET", "/v1/keys")
        return list(body["keys"])

    async def revoke_key(self, key_id: str, *, reason: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "POST", f"/v1/keys/{_segment(key_id)}/revoke", json={"reason": reason}
        )
        return result

    # -- agents --

    async def list_agents(
        self,
        *,
        status: str | None = None,
        capability: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], str | None]:
        params: dict[str, Any] = {"limit": limit}
        for name, value in (("status", status), ("capability", capability), ("cursor", cursor)):
            if value is not None:
                params[name] = value
        body = await self._json("GET", "/v1/agents", params=params)
        return list(body["agents"]), body.get("next_cursor")

    async def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._maybe(f"/v1/agents/{_segment(agent_id)}")
        return found

    async def create_agent_credential(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "POST", "/v1/agents/credentials", json={"name": name}
        )
        return result

    async def list_agent_credentials(self) -> list[dict[str, Any]]:
        body = await self._json("GET", "/v1/agents/credentials")
        return list(body["credentials"])

    async def revoke_agent_credential(self, credential_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(
            "DELETE", f"/v1/agents/credentials/{_segment(credential_id)}"
        )
        return result

    async def whoami(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/v1/me")
        return result

    # -- events --

    async def follow_run_events(
        self, run_id: str, after_seq: int = 0, *, follow: bool = True, output: bool = False
    ) -> AsyncIterator[RunEvent]:
        """History, then live; on a dropped connection, reconnect and resume after the
        last event received (``Last-Event-ID``). Stops after the run's ending event."""
        from chiffon.events.runs import RUN_ENDINGS

        last = after_seq
        delay = 0.2
        retry_ms: float | None = None
        path = f"/v1/runs/{_segment(run_id)}/events"
        params = {} if follow else {"follow": "false"}
        if output and follow:
            params["output"] = "true"
        while True:
            ended = False
            try:
                headers = {"Accept": "text/event-stream"}
                if last:
                    headers["Last-Event-ID"] = str(last)
                timeout = httpx.Timeout(30.0, read=None)
                async with self._http.stream(
                    "GET", path, headers=headers, params=params, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        error = _error(response)
                        if not isinstance(error, Unavailable):
                            raise error
                        raise _Retry(str(error))
                    delay = 0.2
                    async for message in _parse_sse(response):
                        if message.end:
                            return
                        if message.retry is not None:
                            retry_ms = message.retry
                        if message.data is None:
                            continue
                        if message.id is None:  # live output: no stored event, no id
                            if output and message.event == "output":
                                yield _output_line(message, last)
                            continue
                        event = _run_event(message)
                        last = event.seq
                        yield event
                        if event.type in RUN_ENDINGS:
                            ended = True
                            return
                if not follow:
                    return
            except (httpx.TransportError, _Retry):
                pass  # dropped or refused for now: resume below
            if ended:
                return
            wait = max(delay, (retry_ms or 0) / 1000)
            await asyncio.sleep(min(wait, self.max_reconnect_delay))
            delay = min(delay * 2, self.max_reconnect_delay)


class _Retry(Exception):
    pass


@dataclass
class _Message:
    id: str | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    end: bool = False


async def _parse_sse(response: httpx.Response) -> AsyncIterator[_Message]:
    """The text/event-stream format: fields until a blank line; ':' starts a comment."""
    message = _Message()
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data or message.retry is not None:
                message.data = "\n".join(data) if data else None
                yield message
            message, data = _Message(), []
            continue
        if line.startswith(":"):
            if line[1:].strip() == "end":
                yield _Message(end=True)  # the server's mark: the run ended, do not resume
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id":
            message.id = value
        elif name == "event":
            message.event = value
        elif name == "retry" and value.isdigit():
            message.retry = int(value)


def _run_event(message: _Message) -> RunEvent:
    envelope = json.loads(message.data or "{}")
    actor = envelope.get("actor") or {}
    return RunEvent(
        seq=int(message.id or 0),
        type=str(message.event or envelope.get("type")),
        occurred_at=datetime.fromisoformat(envelope["occurred_at"]),
        actor=f"{actor.get('kind')}:{actor.get('id')}",
        payload=envelope.get("payload") or {},
    )


def _output_line(message: _Message, last: int) -> RunEvent:
    line = json.loads(message.data or "{}")
    return RunEvent(
        seq=last,
        type="output",
        occurred_at=datetime.now(UTC),
        actor="agent",
        payload=line if isinstance(line, dict) else {},
    )


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def gateway_client(*, required: bool = False) -> GatewayClient | None:
    """The client for the configured gateway, or None (or an error when ``required``)."""
    config = gateway_config()
    if config is None:
        if required:
            raise Unavailable(
                "no gateway configured: set CHIFFON_GATEWAY_URL and CHIFFON_API_KEY, pass "
                "--gateway-url/--api-key, or start the dev stack (`chiffon up`)"
            )
        return None
    if config.api_key is None and required:
        raise Unauthorized(f"no API key for the gateway at {config.url} (set CHIFFON_API_KEY)")
    return GatewayClient(config.url, config.api_key)
