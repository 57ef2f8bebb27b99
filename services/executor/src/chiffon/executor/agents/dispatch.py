"""What an ``agent`` node dispatches with: this replica's directory and gRPC client.

The composition root makes one ``AgentDispatch`` per replica; the worker installs it
(``install``) in the context its runs execute in, and the agent node reads it
(``current``). Without one, no agent can take a task.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from pathlib import Path

from chiffon.core.logging import get_logger
from chiffon.executor.agents.client import AgentClient
from chiffon.executor.agents.directory import AgentDirectory
from chiffon.executor.agents.routing import Weights
from chiffon.executor.settings import ExecutorSettings

log = get_logger(__name__)


@dataclass
class AgentDispatch:
    directory: AgentDirectory
    client: AgentClient
    # How long a task waits for the directory to reach the stream's end at start-up.
    catch_up_timeout: float = 5.0

    async def close(self) -> None:
        await self.directory.stop()
        await self.client.close()


_CURRENT: ContextVar[AgentDispatch | None] = ContextVar("chiffon_agent_dispatch", default=None)


def install(dispatch: AgentDispatch | None) -> Token[AgentDispatch | None]:
    return _CURRENT.set(dispatch)


def current() -> AgentDispatch | None:
    return _CURRENT.get()


def read_signing_key(path: Path | None) -> bytes | None:
    """The executor's private signing key (PEM), or None (then agents refuse its tasks:
    logged once at start-up)."""
    if path is None:
        log.warning(
            "agents.no_signing_key",
            hint="set CHIFFON_AGENT_SIGNING_KEY_FILE: agents refuse unsigned tasks",
        )
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise SystemExit(
            f"cannot read the agent signing key {path} (CHIFFON_AGENT_SIGNING_KEY_FILE): "
            f"{error.strerror or error}"
        ) from None


def build_dispatch(settings: ExecutorSettings, directory: AgentDirectory) -> AgentDispatch:
    return AgentDispatch(
        directory=directory,
        client=AgentClient(read_signing_key(settings.agent_signing_key_file)),
    )


def weights_from(settings: ExecutorSettings) -> Weights:
    return Weights(
        capacity=settings.agent_weight_capacity,
        success=settings.agent_weight_success,
        latency=settings.agent_weight_latency,
        latency_scale_ms=settings.agent_latency_scale_ms,
    )
