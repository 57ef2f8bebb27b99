"""What the gateway reads of agents: the registry's read model table ``registry_agents``.

The registry service owns and migrates that table; services never import each other,
so the columns the gateway filters on are declared here (on a ``MetaData`` of their own,
outside the gateway's migrations). Rows are read with ``SELECT *`` so that columns the
registry adds later (labels, ttl_seconds, grpc_address) are shown when present and
missing ones are simply absent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from chiffon.events.envelope import AGGREGATE_ID_PATTERN
from chiffon.eventstore import EventStore
from chiffon.readmodels.queries import InvalidCursor

# Same as the registry's agent API accepts (c17.md section 2).
AGENT_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,128}"
AGENT_ID = re.compile(AGENT_ID_PATTERN)
AGGREGATE_ID = re.compile(AGGREGATE_ID_PATTERN)
AGENT_STATUSES = ("online", "offline", "deregistered")
CAPABILITY_MAX_CHARS = 100
GIB = 1024**3  # nvml reports an "8 GB" card's memory as 8 GiB

registry_agents = Table(
    "registry_agents",
    MetaData(),  # not the gateway's: the registry migrates this table
    Column("agent_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("capabilities", JSONB, nullable=False),
    Column("status", String(20), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("version", BigInteger, nullable=False),
)


def encode_cursor(agent_id: str) -> str:
    return base64.urlsafe_b64encode(f"agent:{agent_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None
    kind, _, value = text.partition(":")
    if kind != "agent" or not AGENT_ID.fullmatch(value):
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return value


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One agent as the registry projected it, with the figures routing looks at."""

    data: Mapping[str, Any]

    @property
    def agent_id(self) -> str:
        return str(self.data["agent_id"])

    @property
    def chosen_id(self) -> str:
        """The id the agent registered with (the row's key is a digest of one that holds
        dots or colons, which NATS subjects cannot carry)."""
        return str(self.data.get("chosen_id") or self.data["agent_id"])

    @property
    def resources(self) -> dict[str, Any]:
        value = self.data.get("resources")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def cpu_cores(self) -> float:
        return _number(self.resources.get("cpu_cores"))

    @property
    def memory_bytes(self) -> float:
        return _number(self.resources.get("memory_bytes"))

    @property
    def gpus_vram(self) -> list[float]:
        """VRAM of each GPU: a ``gpus`` list of ``{name, vram_bytes}`` when the row has
        one, else the flat ``gpu_count`` and ``gpu_vram_bytes`` (the largest GPU's)."""
        gpus = self.data.get("gpus")
        if not isinstance(gpus, list) or not gpus:
            gpus = self.resources.get("gpus")
        if isinstance(gpus, list) and gpus:
            return [_number(g.get("vram_bytes")) for g in gpus if isinstance(g, dict)]
        flat = _number(self.resources.get("gpu_vram_bytes"))
        count = int(_number(self.resources.get("gpu_count")) or (1 if flat else 0))
        return [flat] * count

    @property
    def capabilities(self) -> list[str]:
        value = self.data.get("capabilities")
        return [str(c) for c in value] if isinstance(value, list) else []

    def public(self, live: dict[str, Any] | None = None) -> dict[str, Any]:
        d = self.data
        labels = d.get("labels")
        return {
            "agent_id": self.chosen_id,
            "name": d["name"],
            "host": d.get("host"),
            "grpc_address": d.get("grpc_address") or d.get("address"),
            "capabilities": self.capabilities,
            "labels": dict(labels) if isinstance(labels, dict) else {},
            "resources": self.resources,
            "max_concurrency": d.get("max_concurrency"),
            "status": d["status"],
            "status_reason": d.get("status_reason"),
            "ttl_seconds": d.get("ttl_seconds"),
            "registered_at": d.get("registered_at"),
            "updated_at": d.get("updated_at"),
            "live": live,
        }

    def fits(self, *, cpu_cores: float | None, gpu_vram_gb: float | None) -> bool:
        if cpu_cores is not None and self.cpu_cores < cpu_cores:
            return False
        return gpu_vram_gb is None or any(v >= gpu_vram_gb * GIB for v in self.gpus_vram)


def _all_columns() -> Any:
    return select(literal_column("*")).select_from(registry_agents)


async def list_agents(
    engine: AsyncEngine,
    *,
    status: str | None = None,
    capability: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[AgentRow], str | None]:
    """Agents by id; the next page's cursor, or None on the last page."""
    c = registry_agents.c
    query = _all_columns().order_by(c.agent_id).limit(limit + 1)
    if status is not None:
        query = query.where(c.status == status)
    if capability is not None:
        query = query.where(c.capabilities.contains([capability]))
    if cursor is not None:
        query = query.where(c.agent_id > decode_cursor(cursor))
    async with engine.connect() as conn:
        rows = [AgentRow(dict(r._mapping)) for r in await conn.execute(query)]
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].agent_id) if len(rows) > limit else None
    return page, next_cursor


def aggregate_id_for(agent_id: str) -> str:
    """The registry's rule for the row's key: the agent's own id, or for one with ``.``
    or ``:`` (which NATS subjects cannot carry) ``h-`` and a digest of it."""
    if AGGREGATE_ID.fullmatch(agent_id):
        return agent_id
    return "h-" + hashlib.sha256(agent_id.encode()).hexdigest()[:40]


async def get_agent(engine: AsyncEngine, agent_id: str) -> AgentRow | None:
    query = _all_columns().where(registry_agents.c.agent_id == aggregate_id_for(agent_id))
    async with engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return AgentRow(dict(row._mapping)) if row is not None else None


async def available_capacity(
    engine: AsyncEngine,
    *,
    capability: str | None,
    cpu_cores: float | None,
    gpu_vram_gb: float | None,
) -> dict[str, Any]:
    """The online agents that could take a task needing this, and their totals."""
    c = registry_agents.c
    query = _all_columns().where(c.status == "online").order_by(c.agent_id)
    if capability is not None:
        query = query.where(c.capabilities.contains([capability]))
    async with engine.connect() as conn:
        rows = [AgentRow(dict(r._mapping)) for r in await conn.execute(query)]
    fit = [r for r in rows if r.fits(cpu_cores=cpu_cores, gpu_vram_gb=gpu_vram_gb)]
    return {
        "agents": [r.public() for r in fit],
        "totals": {
            "agents": len(fit),
            "slots": sum(int(_number(r.data.get("max_concurrency"))) for r in fit),
            "cpu_cores": sum(r.cpu_cores for r in fit),
            "memory_bytes": sum(r.memory_bytes for r in fit),
            "gpus": sum(len(r.gpus_vram) for r in fit),
            "gpu_vram_bytes": sum(sum(r.gpus_vram) for r in fit),
        },
    }


def heartbeats_bucket(namespace: str) -> str:
    """The registry's bucket of last heartbeats (c17.md: ``<NS>_AGENT_HEARTBEATS``)."""
    return f"{namespace.upper()}_AGENT_HEARTBEATS"


def decode_heartbeat(data: bytes | None) -> dict[str, Any] | None:
    """``{"at": epoch, "live": {...} | null}`` as the registry stores it, shown as the
    live metrics plus ``last_heartbeat`` (ISO 8601); None when absent or unreadable."""
    if data is None:
        return None
    try:
        value = json.loads(data)
        at = datetime.fromtimestamp(float(value["at"]), UTC)
    except (ValueError, TypeError, KeyError, OverflowError, OSError):
        return None
    live = value.get("live") if isinstance(value, dict) else None
    return {**(live if isinstance(live, dict) else {}), "last_heartbeat": at.isoformat()}


async def live_metrics(
    store: EventStore, namespace: str, agent_ids: list[str], timeout: float = 1.0
) -> dict[str, dict[str, Any]]:
    """Each agent's last heartbeat, read from the bucket. Metrics are a nicety: a slow or
    missing bucket leaves them out (within ``timeout``) rather than failing the page."""
    bucket = heartbeats_bucket(namespace)

    async def one(agent_id: str) -> dict[str, Any] | None:
        try:
            return decode_heartbeat(await store.kv_get(bucket, agent_id))
        except Exception:  # noqa: BLE001 — no bucket yet, NATS reconnecting: no metrics
            return None

    try:
        found = await asyncio.wait_for(
            asyncio.gather(*(one(a) for a in agent_ids)), timeout=timeout
        )
    except TimeoutError:
        return {}
    return {a: m for a, m in zip(agent_ids, found, strict=True) if m is not None}


async def public_with_live(
    store: EventStore, namespace: str, rows: list[AgentRow]
) -> list[dict[str, Any]]:
    """The rows as the API shows them, each with its last heartbeat's metrics."""
    live = await live_metrics(store, namespace, [r.agent_id for r in rows])
    return [r.public(live.get(r.agent_id)) for r in rows]
