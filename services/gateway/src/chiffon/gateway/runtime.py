"""What the routes work with: the event store, the database, the command bus, the key
cache and the SSE feeds of one gateway process, and the helpers that translate their
failures into problems."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.commands import Command, CommandBus, CommandRefused, CommandUnavailable
from chiffon.core.db import async_dsn
from chiffon.core.logging import get_logger
from chiffon.events.envelope import AGGREGATE_ID_PATTERN
from chiffon.events.limits import COMMAND_MAX_BYTES, NODE_ID_PATTERN, WORKFLOW_NAME_PATTERN
from chiffon.eventstore import AggregateKey, EventStore
from chiffon.gateway.auth import KeyCache
from chiffon.gateway.costs import usd
from chiffon.gateway.keys import ApiKeys
from chiffon.gateway.problems import (
    BadRequest,
    Conflict,
    IdempotencyConflict,
    NotFound,
    PayloadTooLarge,
    Problem,
    Unavailable,
    ValidationFailed,
)
from chiffon.gateway.ratelimit import RateLimiter
from chiffon.gateway.settings import GatewaySettings
from chiffon.gateway.sse import RunFeeds
from chiffon.readmodels.queries import InvalidCursor
from chiffon.readmodels.tables import runs as runs_table

log = get_logger(__name__)
T = TypeVar("T")

RUN_ID = re.compile(AGGREGATE_ID_PATTERN)
NODE_ID = re.compile(NODE_ID_PATTERN)
WORKFLOW_NAME = re.compile(WORKFLOW_NAME_PATTERN)


COST_RECHECK_SECONDS = 1.0
"""How long an ended run's view is served without looking again at its cost: the cost
service prices a run's last calls shortly after the run ends, so an ended run's view
may still change, by its ``cost_usd`` only. One lookup a second per polled run keeps
the cached answer (2,000+ GET/s) and the cost at most a second behind the read model."""


@dataclass(frozen=True, slots=True)
class RunView:
    position: int  # the stream sequence of the last event folded into this view
    etag: str
    body: bytes
    ended: bool
    cost: str = "0"  # the run's cost_usd in this view
    checked_at: float = 0.0  # time.monotonic() when position and cost were last seen current

    def current(self, position: int, cost: str) -> bool:
        return position == self.position and cost == self.cost

    def needs_check(self, now: float) -> bool:
        """A live run's view is checked on every read; an ended one's once a second."""
        return not self.ended or now - self.checked_at >= COST_RECHECK_SECONDS


class RunViewCache:
    """``GET /v1/runs/{id}`` answers, kept (LRU) as JSON. An ended run never changes, so
    its view is served as is; a live run's view is served while the read model's
    position for it is still the one the view was built at (one indexed lookup)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, RunView] = OrderedDict()

    def get(self, run_id: str) -> RunView | None:
        item = self._items.get(run_id)
        if item is not None:
            self._items.move_to_end(run_id)
        return item

    def put(self, run_id: str, view: RunView) -> None:
        self._items[run_id] = view
        self._items.move_to_end(run_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class _NoReset(asyncpg.Connection):  # type: ignore[misc]
    """The position pool runs single read-only statements: nothing to reset on release."""

    def get_reset_query(self) -> str:
        return ""


class RunPositions:
    """The read model's position per run, by a prepared statement on a small asyncpg
    pool of its own: a SQLAlchemy checkout (ping, BEGIN, ROLLBACK) would cost more than
    the whole cached answer."""

    QUERY = "SELECT position FROM runs WHERE run_id = $1"
    QUERY_WITH_COST = (
        "SELECT r.position, c.cost_usd FROM runs r"
        " LEFT JOIN cost_runs c ON c.run_id = r.run_id WHERE r.run_id = $1"
    )
    NO_COSTS_RETRY_SECONDS = 30.0  # the cost service's tables may be created after we start

    def __init__(self, dsn: str, size: int = 4) -> None:
        url = make_url(async_dsn(dsn)).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._no_costs_until = 0.0

    async def __aenter__(self) -> RunPositions:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._size, connection_class=_NoReset
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def get(self, run_id: str) -> int | None:
        """The run's position in the read model; None if it has no row (yet)."""
        assert self._pool is not None
        position = await self._pool.fetchval(self.QUERY, run_id)
        return int(position) if position is not None else None

    async def position_and_cost(self, run_id: str) -> tuple[int, str] | None:
        """The run's position and its cost_usd (as the API writes it) in one lookup;
        None if the run has no row (yet). Without the cost service's tables, cost "0"."""
        assert self._pool is not None
        now = time.monotonic()
        if now >= self._no_costs_until:
            try:
                row = await self._pool.fetchrow(self.QUERY_WITH_COST, run_id)
            except asyncpg.UndefinedTableError:
                self._no_costs_until = now + self.NO_COSTS_RETRY_SECONDS
            else:
                if row is None:
                    return None
                return int(row[0]), usd(row[1])
        position = await self.get(run_id)
        return (position, "0") if position is not None else None


@dataclass
class Gateway:
    settings: GatewaySettings
    store: EventStore
    engine: AsyncEngine
    bus: CommandBus
    keys: KeyCache
    api_keys: ApiKeys
    feeds: RunFeeds
    limiter: RateLimiter
    instance: str
    positions: RunPositions | None = None
    run_views: RunViewCache = field(default_factory=RunViewCache)

    # -- commands ----------------------------------------------------------------------

    async def send(self, command: Command) -> dict[str, Any]:
        size = len(command.model_dump_json())
        if size > COMMAND_MAX_BYTES:
            raise PayloadTooLarge(
                f"the request is {size} bytes once encoded; the limit is {COMMAND_MAX_BYTES}"
            )
        try:
            return await self.bus.send(command, timeout=self.settings.command_timeout_seconds)
        except CommandRefused as refused:
            raise refusal_problem(refused) from None
        except CommandUnavailable:
            raise Unavailable(
                f"no {command.owner} answered {command.name} within "
                f"{self.settings.command_timeout_seconds:g}s",
                retry_after=2,
            ) from None
        except Exception as error:
            # Transport errors (NATS reconnecting, payload refused): retryable, not a 500.
            if type(error).__module__.startswith("nats"):
                raise Unavailable(
                    f"the message bus refused the command: {type(error).__name__}"
                ) from None
            raise

    # -- queries -----------------------------------------------------------------------

    async def query(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, self.settings.query_timeout_seconds)
        except InvalidCursor as error:
            raise ValidationFailed(
                str(error), errors=[{"path": "query.cursor", "line": None, "message": str(error)}]
            ) from None
        except TimeoutError:
            raise Unavailable("the read model did not answer in time", retry_after=1) from None
        except OSError as error:
            raise Unavailable(f"cannot reach PostgreSQL: {error}") from None
        except Problem:
            raise
        except Exception as error:
            if type(error).__module__.startswith(("sqlalchemy", "asyncpg")):
                log.warning("gateway.query_failed", error=f"{type(error).__name__}: {error}")
                raise Unavailable("the read model is unavailable", retry_after=2) from None
            raise

    async def run_start(self, run_id: str) -> int | None:
        """The stream sequence of the run's first event, from the read model (or None)."""
        async with self.engine.connect() as conn:
            seq = await conn.scalar(select(runs_table.c.seq).where(runs_table.c.run_id == run_id))
        return int(seq) if seq is not None else None

    async def in_store(self, aggregate: str, aggregate_id: str) -> bool:
        """Does the event store hold any event of this aggregate? (A read model may lag.)"""
        try:
            version = await self.store.aggregate_version(AggregateKey(aggregate, aggregate_id))
        except Exception as error:  # noqa: BLE001 — NATS trouble is a 503, not a 500
            raise Unavailable(f"the event store did not answer: {type(error).__name__}") from None
        return version > 0

    async def read_through(self, aggregate: str, aggregate_id: str, load: Any) -> Any:
        """``load()`` from the read model; when it finds nothing but the event store has
        the aggregate (just created), wait for the projection, a bounded time."""
        found = await self.query(load())
        if found is not None:
            return found
        if not await self.in_store(aggregate, aggregate_id):
            return None
        deadline = asyncio.get_running_loop().time() + self.settings.consistency_wait_seconds
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            found = await self.query(load())
            if found is not None:
                return found
        raise Unavailable(
            f"{aggregate} {aggregate_id!r} exists but the read model has not caught up yet",
            retry_after=1,
        )


def refusal_problem(refused: CommandRefused) -> Problem:
    refusal = refused.refusal
    errors = [
        {
            "path": str(d.get("path") or "(root)"),
            "line": d.get("line") if isinstance(d.get("line"), int) else None,
            "message": str(d.get("message", "")),
        }
        for d in refusal.details
    ] or None
    if refusal.code == "invalid":
        return ValidationFailed(refusal.message, errors=errors or [])
    if refusal.code == "not_found":
        return NotFound(refusal.message)
    if refusal.code == "conflict":
        if errors and any(e["path"] == "idempotency_key" for e in errors):
            return IdempotencyConflict(refusal.message, errors=errors)
        return Conflict(refusal.message, errors=errors)
    return Unavailable(refusal.message, retry_after=1)


async def get_gateway(request: Request) -> Gateway:
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise Unavailable("the gateway is starting", retry_after=1)
    return gateway  # type: ignore[no-any-return]


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def check_run_id(run_id: str) -> str:
    # fullmatch, not match: the patterns end in ``$``, which also matches before a
    # trailing newline, so ``x\n`` passed and reached the command model (a 500).
    if not RUN_ID.fullmatch(run_id):
        raise NotFound(f"no run {run_id[:200]!r}")
    return run_id


def check_node_id(node_id: str) -> str:
    if not NODE_ID.fullmatch(node_id):
        raise NotFound(f"no node {node_id[:200]!r}")
    return node_id


def check_workflow_name(name: str) -> str:
    if not WORKFLOW_NAME.fullmatch(name):
        raise NotFound(f"no workflow named {name[:200]!r}")
    return name


def parse_json_object(body: bytes, what: str = "body") -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the {what} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the {what} must be a JSON object")
    return value
