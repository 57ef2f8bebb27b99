"""Composition root of the agent service: settings -> runtime -> gRPC server -> registry.

An agent needs neither NATS nor PostgreSQL: it runs anywhere that reaches the registry's
HTTP API and that the executor reaches over gRPC.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from chiffon.agent.application import AgentIdentity, AgentRuntime
from chiffon.agent.grpc_server import start_grpc_server
from chiffon.agent.registration import Registration
from chiffon.agent.settings import AgentSettings
from chiffon.agent.tools.registry import build_tools
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
        tools=build_tools(settings),
    )


async def serve(ctx: ServiceContext, executor_key: Ed25519PublicKey, credential: str) -> None:
    settings = ctx.settings
    assert isinstance(settings, AgentSettings)
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
    try:
        settings = AgentSettings()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}"
            for e in error.errors()
        )
        print(f"chiffon agent: invalid settings: {problems}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    assert settings.executor_public_key_file is not None
    try:
        executor_key = load_public_key(settings.executor_public_key_file.read_bytes())
    except (OSError, ValueError) as error:
        message = error.strerror if isinstance(error, OSError) else str(error)
        print(  # noqa: T201
            f"chiffon agent: executor public key {settings.executor_public_key_file}: {message}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    credential = ""
    if settings.agent_credential_file is not None:
        try:
            credential = settings.agent_credential_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            message = error.strerror if isinstance(error, OSError) else "not text"
            print(  # noqa: T201
                f"chiffon agent: credential {settings.agent_credential_file}: {message}",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
        if not credential:
            print("chiffon agent: the credential file is empty", file=sys.stderr)  # noqa: T201
            raise SystemExit(2)

    async def main_with_keys(ctx: ServiceContext) -> None:
        await serve(ctx, executor_key, credential)

    run_service("agent", settings, main_with_keys)


if __name__ == "__main__":
    main()
