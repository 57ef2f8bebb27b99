"""What the gateway reads of spend: the cost service's read models ``cost_calls`` and
``cost_runs``.

The cost service owns and migrates those tables; services never import each other, so
the columns the gateway reads are declared here (on a ``MetaData`` of their own, outside
the gateway's migrations), as ``agents.py`` does for the registry's table.

Money is ``Decimal`` from ``NUMERIC`` to the JSON string, never a float: a report adds
up to the cent however many calls it sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    func,
    select,
)
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

GroupBy = Literal["provider", "model", "workflow", "key", "day"]
GROUP_BYS: tuple[str, ...] = get_args(GroupBy)
NONE_KEY = "(none)"  # the group of calls without a workflow or key (a trigger's run, say)

_costs = MetaData()  # not the gateway's: the cost service migrates these tables

cost_calls = Table(
    "cost_calls",
    _costs,
    Column("llm_event_id", String, primary_key=True),
    Column("run_id", String, nullable=False),
    Column("workflow", String),
    Column("key_id", String),
    Column("agent_id", String),
    Column("node_id", String, nullable=False),
    Column("provider", String, nullable=False),
    Column("model", String, nullable=False),
    Column("called_at", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),
    Column("month", String, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("cached_read_tokens", BigInteger, nullable=False),
    Column("cache_write_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_usd", Numeric(asdecimal=True)),  # NULL: unknown price
    Column("source", String, nullable=False),
)

cost_runs = Table(
    "cost_runs",
    _costs,
    Column("run_id", String, primary_key=True),
    Column("cost_usd", Numeric(asdecimal=True), nullable=False),
    Column("calls", Integer, nullable=False),
    Column("unknown_calls", Integer, nullable=False),
    Column("workflow", String),
    Column("key_id", String),
    Column("updated_at", DateTime(timezone=True)),
)

_GROUP_COLUMNS = {
    "provider": cost_calls.c.provider,
    "model": cost_calls.c.model,
    "workflow": cost_calls.c.workflow,
    "key": cost_calls.c.key_id,
    "day": cost_calls.c.day,
}


def usd(value: Decimal | int | None) -> str:
    """An amount as the API writes it: plain decimal notation, no exponent, no trailing
    zeros (``0.0000117``, ``12.5``, ``0``)."""
    if value is None:
        return "0"
    amount = Decimal(value)
    if amount == 0:
        return "0"
    text = format(amount.normalize(), "f")
    return text


class BadRange(ValueError):
    """``from`` or ``to`` is not an ISO date or date-time, or ``from`` is after ``to``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_bound(text: str, field: str, *, end: bool) -> datetime:
    """An ISO date (a whole UTC day: ``to`` includes it) or date-time (UTC when it has no
    offset; ``to`` is exclusive) as an aware UTC instant."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except ValueError:
        raise BadRange(
            field, f"{field} must be an ISO date (2026-12-07) or date-time, not {text[:60]!r}"
        ) from None
    except OverflowError:
        # The day after 9999-12-31, or year 1 moved to UTC: past the calendar, so the
        # range is open on that side rather than refused.
        return datetime.max.replace(tzinfo=UTC) if end else datetime.min.replace(tzinfo=UTC)


def parse_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    lower = parse_bound(start, "from", end=False) if start else None
    upper = parse_bound(end, "to", end=True) if end else None
    if lower is not None and upper is not None and lower >= upper:
        raise BadRange("to", "from must be before to")
    return lower, upper


@dataclass(frozen=True, slots=True)
class CostGroup:
    key: str
    cost_usd: Decimal
    calls: int
    unknown_calls: int
    prompt_tokens: int
    completion_tokens: int

    def public(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "cost_usd": usd(self.cost_usd),
            "calls": self.calls,
            "unknown_calls": self.unknown_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def _key(value: Any) -> str:
    if value is None:
        return NONE_KEY
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


async def cost_groups(
    engine: AsyncEngine,
    group_by: GroupBy,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
) -> list[CostGroup]:
    """Priced calls summed per ``group_by`` key in ``[start, end)``, most expensive first
    (then by key). Calls of unknown price count in ``calls`` and ``unknown_calls``, not
    in ``cost_usd``."""
    column = _GROUP_COLUMNS[group_by]
    cost = func.coalesce(func.sum(cost_calls.c.cost_usd), 0)
    query = (
        select(
            column.label("key"),
            cost.label("cost_usd"),
            func.count().label("calls"),
            func.count().filter(cost_calls.c.cost_usd.is_(None)).label("unknown_calls"),
            func.coalesce(func.sum(cost_calls.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(cost_calls.c.completion_tokens), 0).label("completion"),
        )
        .group_by(column)
        .order_by(cost.desc(), column.asc().nulls_last())
    )
    if start is not None:
        query = query.where(cost_calls.c.called_at >= start)
    if end is not None:
        query = query.where(cost_calls.c.called_at < end)
    if limit is not None:
        query = query.limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        CostGroup(
            key=_key(row.key),
            cost_usd=Decimal(row.cost_usd),
            calls=int(row.calls),
            unknown_calls=int(row.unknown_calls),
            prompt_tokens=int(row.prompt_tokens),
            completion_tokens=int(row.completion),
        )
        for row in rows
    ]


def report(group_by: GroupBy, groups: list[CostGroup]) -> dict[str, Any]:
    """The ``GET /v1/costs`` answer."""
    total = sum((g.cost_usd for g in groups), Decimal(0))
    return {
        "group_by": group_by,
        "groups": [g.public() for g in groups],
        "total_usd": usd(total),
    }


async def run_cost(engine: AsyncEngine, run_id: str) -> Decimal:
    """The known part of a run's spend (0 when the cost service has no row for it, or
    its tables are not there yet: a run's page must not fail for want of prices)."""
    try:
        async with engine.connect() as conn:
            value = await conn.scalar(
                select(cost_runs.c.cost_usd).where(cost_runs.c.run_id == run_id)
            )
    except ProgrammingError as error:
        if "cost_runs" in str(error) and "does not exist" in str(error):
            return Decimal(0)
        raise
    return Decimal(value) if value is not None else Decimal(0)


# -- the dashboard's chart ---------------------------------------------------------------

CHART_DAYS = 30
CHART_WIDTH = 720
CHART_HEIGHT = 160


@dataclass(frozen=True, slots=True)
class Bar:
    """One day's bar of the spend chart, in SVG user units (y grows downwards)."""

    day: str
    cost_usd: str
    calls: int
    x: float
    y: float
    width: float
    height: float


def last_days(today: date, days: int = CHART_DAYS) -> tuple[datetime, datetime]:
    """The UTC window of the ``days`` days ending with ``today`` (included)."""
    start = datetime.combine(today - timedelta(days=days - 1), time(), tzinfo=UTC)
    return start, start + timedelta(days=days)


def daily_bars(
    groups: list[CostGroup],
    today: date,
    *,
    days: int = CHART_DAYS,
    width: float = CHART_WIDTH,
    height: float = CHART_HEIGHT,
) -> tuple[list[Bar], Decimal]:
    """A bar per day (a day with no calls too, at zero height) for the ``days`` days
    ending ``today``, scaled to the most expensive day; and that day's amount."""
    by_day = {g.key: g for g in groups}
    top = max((g.cost_usd for g in groups), default=Decimal(0))
    slot = width / days
    bars = []
    for index in range(days):
        day = (today - timedelta(days=days - 1 - index)).isoformat()
        group = by_day.get(day)
        cost = group.cost_usd if group else Decimal(0)
        tall = float(cost / top) * height if top > 0 else 0.0
        if cost > 0:
            tall = max(tall, 1.0)  # a cent beside a hundred dollars still shows
        bars.append(
            Bar(
                day=day,
                cost_usd=usd(cost),
                calls=group.calls if group else 0,
                x=round(index * slot + slot * 0.1, 2),
                y=round(height - tall, 2),
                width=round(slot * 0.8, 2),
                height=round(tall, 2),
            )
        )
    return bars, top
