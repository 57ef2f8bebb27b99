"""Composition root of the agent service: settings -> runtime -> gRPC server -> registry.

An agent needs neither NATS nor PostgreSQL: it runs anywhere that reaches the registry's
HTTP API and that the executor reaches over gRPC.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from chiffon.agent.application import AgentIdentity, AgentRuntime
from chiffon.agent.grpc_server import start_grpc_server
from chiffon.agent.registration import Registration
from chiffon.agent.settings import AgentSettings
from chiffon.agentproto.auth import load_public_key
from chiffon.core.logging import get_logger
from chiffon.core.service import ServiceContext, run_service

log = get_logger(__name__)


def build_runtime(settings: AgentSettings) -> AgentRuntime:
    identity = AgentIdentity(
        agent_id=settings.resolved_agent_id,
        name=settings.agent_name,
        host=settings.advertise_host,
        capabilities=settings.capabilities,
        labels=settings.labels,
    )
    scratch = settings.agent_scratch_dir or (
        Path(tempfile.gettempdir()) / f"chiffon-agent-{identity.agent_id}"
    )
    return AgentRuntime(
        identity,
        allow=settings.allow,
        scratch_root=scratch,
        output_cap=settings.agent_output_cap_bytes,
        max_concurrency=settings.agent_max_concurrency,
        default_timeout=settings.agent_default_timeout_seconds,
        max_timeout=settings.agent_max_timeout_seconds,
        recent_results=settings.agent_recent_results,
    )


async def serve(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, AgentSettings)
    assert settings.executor_public_key_file is not None
    try:
        executor_key = load_public_key(settings.executor_public_key_file.read_bytes())
    except (OSError, ValueError) as error:
        raise SystemExit(
            f"executor public key {settings.executor_public_key_file}: {error}"
        ) from None
    runtime = build_runtime(settings)
    started = ctx.health.starting()
    server, health, port = await start_grpc_server(
        runtime, executor_key, host=settings.agent_grpc_host, port=settings.agent_grpc_port
    )
    log.info(
        "agent.serving",
        agent_id=runtime.identity.agent_id,
        grpc=f"{settings.agent_grpc_host}:{port}",
        capabilities=list(runtime.identity.capabilities),
    )
    registration: asyncio.Task[None] | None = None
    if settings.registry_url:
        assert settings.agent_credential_file is not None
        try:
            credential = settings.agent_credential_file.read_text().strip()
        except OSError as error:
            raise SystemExit(
                f"agent credential {settings.agent_credential_file}: {error.strerror}"
            ) from None
        registering = Registration(
            runtime,
            registry_url=settings.registry_url,
            credential=credential,
            grpc_port=port,
            ttl_seconds=settings.agent_ttl_seconds,
        )
        registration = asyncio.create_task(registering.run(ctx.stopping), name="registration")
    else:
        log.warning("agent.unregistered", reason="no registry URL: executors cannot find it")
    started()
    try:
        await ctx.stopping.wait()
    finally:
        if registration is not None:
            # Deregister first: the executor stops routing here while tasks finish.
            await asyncio.wait({registration}, timeout=5.0)
        await health.enter_graceful_shutdown()
        await runtime.close()
        await server.stop(grace=2.0)


def main() -> None:
    run_service("agent", AgentSettings(), serve)


if __name__ == "__main__":
    main()
