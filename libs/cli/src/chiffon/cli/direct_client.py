"""``ChiffonClient`` over the internals: NATS commands, PostgreSQL read models, the event store.

Used until the gateway lands; it needs the same network reach as a service.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import nats
import nats.errors
import pydantic
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.cli.client import (
    ChiffonClient,
    ClientError,
    Conflict,
    InvalidRequest,
    NotFound,
    RunEvent,
    Unavailable,
)
from chiffon.cli.connect import find_config_file
from chiffon.commands import (
    ApproveNode,
    CancelRun,
    Command,
    CommandBus,
    CommandRefused,
    CommandUnavailable,
    RegisterWorkflow,
    StartRun,
)
from chiffon.core.db import create_engine
from chiffon.core.settings import ChiffonSettings
from chiffon.events import CATALOG, Actor
from chiffon.events.envelope import is_valid_aggregate_id
from chiffon.events.runs import TriggerRef
from chiffon.eventstore import AggregateKey, EventStoreError, JetStreamEventStore
from chiffon.readmodels import queries
from chiffon.readmodels.queries import InvalidCursor
from chiffon.readmodels.views import (
    ApprovalPublic,
    RunPublic,
    RunSummary,
    WorkflowPublic,
    WorkflowSummary,
)

_ERRORS: dict[str, type[ClientError]] = {
    "invalid": InvalidRequest,
    "not_found": NotFound,
    "conflict": Conflict,
    "unavailable": Unavailable,
}
# NATS refuses messages over its max_payload (1 MiB by default).
MAX_COMMAND_BYTES = 1_000_000
MAX_WORKFLOW_BYTES = 1024 * 1024


def _command(kind: type[Command], **fields: Any) -> Command:
    """Build a command, or refuse it here with the same shape a service refusal has."""
    try:
        return kind(**fields)
    except pydantic.ValidationError as error:
        details = [
            {"path": ".".join(map(str, e["loc"])), "line": None, "message": e["msg"]}
            for e in error.errors(include_url=False)
        ]
        raise InvalidRequest(f"invalid {kind.name} request", details) from None


def load_settings() -> ChiffonSettings:
    """Settings from the environment, over the dev stack's config file when there is one."""
    path = find_config_file()
    if path is not None and not os.environ.get("CHIFFON_CONFIG_FILE"):
        os.environ["CHIFFON_CONFIG_FILE"] = str(path)
    return ChiffonSettings()


def cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 — no user name (a container): still an actor
        user = "cli"
    return Actor(kind="user", id=user[:200] or "cli", name=None)


class DirectClient(ChiffonClient):
    def __init__(
        self, settings: ChiffonSettings, *, actor: Actor | None = None, timeout: float = 15.0
    ) -> None:
        self.settings = settings
        self.actor = actor or cli_actor()
        self.timeout = timeout
        self._stack = AsyncExitStack()
        self._store: JetStreamEventStore | None = None
        self._bus: CommandBus | None = None
        self._engine: AsyncEngine | None = None

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        await self._stack.aclose()

    async def _nats(self) -> tuple[JetStreamEventStore, CommandBus]:
        if self._store is None:
            url = self.settings.nats_url

            async def quiet(_error: Exception) -> None:
                return None  # reported once, below, not as a traceback per attempt

            try:
                # A CLI gives up quickly (a service reconnects forever; a person waits).
                nc = await nats.connect(
                    url,
                    name="chiffon-cli",
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=3,
                    reconnect_time_wait=0.5,
                    error_cb=quiet,
                )
            except (OSError, nats.errors.Error, TimeoutError) as error:
                raise Unavailable(
                    f"cannot reach NATS at {url}: {error or type(error).__name__} (is the stack up? `chiffon up`)"
                ) from None
            self._stack.push_async_callback(_close_nats, nc)
            self._store = JetStreamEventStore(nc, CATALOG, namespace=self.settings.namespace)
            self._bus = CommandBus(nc, self.settings.namespace, timeout=self.timeout)
        assert self._bus is not None
        return self._store, self._bus

    def _db(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(self.settings.database_dsn(), pool_size=2, max_overflow=2)
        return self._engine

    async def _send(self, command: Command) -> dict[str, Any]:
        _store, bus = await self._nats()
        size = len(command.model_dump_json())
        if size > MAX_COMMAND_BYTES:
            raise InvalidRequest(
                f"the request is too large ({size} bytes; the limit is {MAX_COMMAND_BYTES})"
            )
        try:
            return await bus.send(command)
        except CommandRefused as refused:
            r = refused.refusal
            raise _ERRORS.get(r.code, ClientError)(r.message, r.details) from None
        except CommandUnavailable:
            raise Unavailable(
                f"no executor answered {command.name} (is the executor running? `chiffon status`)"
            ) from None

    async def _query(self, call: Any) -> Any:
        try:
            return await call
        except InvalidCursor as error:
            raise InvalidRequest(str(error)) from None
        except OSError as error:
            raise Unavailable(f"cannot reach PostgreSQL: {error}") from None
        except Exception as error:
            if type(error).__module__.startswith(("sqlalchemy", "asyncpg")):
                raise Unavailable(
                    f"read models unavailable: {type(error).__name__}: {error}"
                ) from None
            raise

    # -- workflows --

    async def register_workflow(
        self, source: str, *, source_format: str = "yaml"
    ) -> dict[str, Any]:
        size = len(source.encode("utf-8", "replace"))
        if size > MAX_WORKFLOW_BYTES:
            raise InvalidRequest(
                f"the workflow is too large ({size} bytes; the limit is {MAX_WORKFLOW_BYTES} bytes, 1 MiB)"
            )
        return await self._send(
            _command(RegisterWorkflow, actor=self.actor, source=source, source_format=source_format)
        )

    async def list_workflows(self) -> list[WorkflowSummary]:
        result: list[WorkflowSummary] = await self._query(queries.list_workflows(self._db()))
        return result

    async def get_workflow(self, name: str, version: int | None = None) -> WorkflowPublic | None:
        result: WorkflowPublic | None = await self._query(
            queries.get_workflow(self._db(), name, version)
        )
        return result

    # -- runs --

    async def start_run(
        self,
        workflow: str,
        *,
        inputs: dict[str, Any],
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        return await self._send(
            _command(
                StartRun,
                actor=self.actor,
                workflow=workflow,
                version=version,
                inputs=inputs,
                idempotency_key=idempotency_key,
                trigger=TriggerRef(kind="cli"),
            )
        )

    async def get_run(self, run_id: str) -> RunPublic | None:
        result: RunPublic | None = await self._query(queries.get_run(self._db(), run_id))
        return result

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[RunSummary], str | None]:
        result: tuple[list[RunSummary], str | None] = await self._query(
            queries.list_runs(
                self._db(), status=status, workflow=workflow, cursor=cursor, limit=limit
            )
        )
        return result

    async def cancel_run(self, run_id: str, *, reason: str | None = None) -> dict[str, Any]:
        return await self._send(_command(CancelRun, actor=self.actor, run_id=run_id, reason=reason))

    async def approve(
        self, run_id: str, node_id: str, *, approve: bool = True, comment: str | None = None
    ) -> dict[str, Any]:
        return await self._send(
            _command(
                ApproveNode,
                actor=self.actor,
                run_id=run_id,
                node_id=node_id,
                approve=approve,
                comment=comment,
            )
        )

    async def list_pending_approvals(self) -> list[ApprovalPublic]:
        result: list[ApprovalPublic] = await self._query(queries.list_pending_approvals(self._db()))
        return result

    async def follow_run_events(self, run_id: str, after_seq: int = 0) -> AsyncIterator[RunEvent]:  # type: ignore[override]
        store, _bus = await self._nats()
        if not is_valid_aggregate_id(run_id):  # no subject wildcard gets through
            raise NotFound(f"no run {run_id!r}")
        subject = store.streams.aggregate_filter("run", run_id)
        try:
            # Events are the truth here: no event, no run (not one still to appear).
            if await store.aggregate_version(AggregateKey("run", run_id)) == 0:
                raise NotFound(f"no run {run_id!r}")
            async for event in store.subscribe(
                "RUNS", start=after_seq + 1, subjects=[subject], batch=200
            ):
                env = event.envelope
                yield RunEvent(
                    seq=event.sequence,
                    type=event.type,
                    occurred_at=env.occurred_at,
                    actor=f"{env.actor.kind}:{env.actor.id}",
                    payload=env.payload.model_dump(mode="json"),
                )
        except EventStoreError as error:
            raise Unavailable(str(error)) from None


async def _close_nats(nc: Any) -> None:
    if not nc.is_closed:
        try:
            await nc.drain()
        except Exception:  # noqa: BLE001 — closing a connection to a server that went away
            await nc.close()
