"""Folds ``cost.calls.priced`` (and the older ``cost.call.priced``, one call each) into
``cost_calls`` (a row per call) and ``cost_runs`` (a row per run).

A batch of events goes in with one binary COPY of its calls into a staging table and one
statement: the calls are inserted (a call already there, priced again in another batch
after a crash, is skipped: ``ON CONFLICT (llm_event_id) DO NOTHING``; the same call twice
in the batch too), and only those inserted (``RETURNING``) are added to their runs'
totals, one upsert row per run. So a run's total is the sum of its calls' rows, whatever
the stream holds twice, and a rebuild gives the same totals to the cent.

Little Python per call on this side: the events' columns are zipped into the COPY's
records (in C), and ``day`` and ``month`` (UTC) are computed by PostgreSQL from
``called_at``. Two columns travel in another form than ``cost_calls`` keeps them:
``called_at`` as whole microseconds since the Unix epoch (a bigint) and ``cost_usd`` as
the decimal's text, and PostgreSQL makes them a ``timestamptz`` and a ``numeric`` again,
exactly. asyncpg's binary encoders for a datetime with pydantic's ``TzInfo`` and for a
``Decimal`` took 6-8 of the ~9 us of client CPU a call cost here; this way about 4.7 us,
with PostgreSQL's CPU unchanged (22.8-24.0 against 22.1-24.7 us; the time as ISO text
cost PostgreSQL 28 us: its timestamp parser). Measured side by side on the same 3,000
calls. (The columns as arrays of one ``INSERT .. SELECT FROM unnest(..)`` cost more:
asyncpg checks each array element against three ``collections.abc`` classes, 48
Python-level ``isinstance`` calls per call; the event's JSON as one ``jsonb`` parameter
spread by PostgreSQL cost it 10 us more per call.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.cost.readmodel import cost_calls, cost_runs
from chiffon.events.costs import CALL_COLUMNS, CallPriced, CallsPriced
from chiffon.eventstore import RecordedEvent
from chiffon.projections import Projection

_STORED = [name for name in CALL_COLUMNS if name in cost_calls.columns]  # not attempt
_NAMES = ", ".join(f'"{name}"' for name in _STORED)
_STAGE = "_stage_priced_calls_wire"
# cost_calls' columns but day and month, without its constraints (checked on insert);
# called_at in microseconds since the epoch, cost_usd as text.
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS SELECT "  # noqa: S608
    + ", ".join(
        '0::bigint AS "called_at"'
        if n == "called_at"
        else '"cost_usd"::text AS "cost_usd"'
        if n == "cost_usd"
        else f'"{n}"'
        for n in _STORED
    )
    + " FROM cost_calls WITH NO DATA"
)
# Whole seconds and the microseconds apart, so every product is an exact integer
# interval (interval * number goes through a double).
_CALLED_AT = (
    "timestamptz 'epoch' + (called_at / 1000000) * interval '1 second'"
    " + (called_at % 1000000) * interval '1 microsecond'"
)
_STAGED = ", ".join(
    f'{_CALLED_AT} AS "called_at"'
    if n == "called_at"
    else '"cost_usd"::numeric AS "cost_usd"'
    if n == "cost_usd"
    else f'"{n}"'
    for n in _STORED
)

_FOLD = f"""
WITH inserted AS (
    INSERT INTO cost_calls ({_NAMES}, day, month)
    SELECT {_NAMES}, (called_at AT TIME ZONE 'UTC')::date,
           to_char(called_at AT TIME ZONE 'UTC', 'YYYY-MM')
    FROM (SELECT {_STAGED} FROM {_STAGE}) AS staged
    ON CONFLICT (llm_event_id) DO NOTHING
    RETURNING run_id, cost_usd, workflow, key_id, called_at
)
INSERT INTO cost_runs (run_id, cost_usd, calls, unknown_calls, workflow, key_id, updated_at)
SELECT run_id, COALESCE(SUM(cost_usd), 0), COUNT(*), COUNT(*) FILTER (WHERE cost_usd IS NULL),
       MAX(workflow), MAX(key_id), MAX(called_at)
FROM inserted GROUP BY run_id
ON CONFLICT (run_id) DO UPDATE SET
    cost_usd = cost_runs.cost_usd + EXCLUDED.cost_usd,
    calls = cost_runs.calls + EXCLUDED.calls,
    unknown_calls = cost_runs.unknown_calls + EXCLUDED.unknown_calls,
    workflow = COALESCE(cost_runs.workflow, EXCLUDED.workflow),
    key_id = COALESCE(cost_runs.key_id, EXCLUDED.key_id),
    updated_at = GREATEST(cost_runs.updated_at, EXCLUDED.updated_at)
"""  # noqa: S608 — names from our own table metadata; values travel by COPY


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _microseconds(times: Sequence[datetime]) -> list[int]:
    """Aware times as whole microseconds since the Unix epoch (exact)."""
    return [(at - _EPOCH) // _MICROSECOND for at in times]


def _texts(costs: Sequence[Decimal | None]) -> list[str | None]:
    return [None if cost is None else str(cost) for cost in costs]


def columns_of(events: Sequence[RecordedEvent]) -> dict[str, list[Any]]:
    """The priced calls of ``events``, as the stage's columns, in stream order:
    ``called_at`` in microseconds since the epoch, ``cost_usd`` as the decimal's text
    (None for an unknown price)."""
    columns: dict[str, list[Any]] = {name: [] for name in _STORED}
    for event in events:
        payload = event.payload
        if isinstance(payload, CallsPriced):
            for name, column in columns.items():
                column.extend(getattr(payload, name))
        elif isinstance(payload, CallPriced):
            for name, column in columns.items():
                column.append(getattr(payload, name))
    columns["called_at"] = _microseconds(columns["called_at"])
    columns["cost_usd"] = _texts(columns["cost_usd"])
    return columns


class SpendProjection(Projection):
    name: ClassVar[str] = "cost.spend"
    context: ClassVar[str] = "COSTS"
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {CallsPriced.event_type, CallPriced.event_type}
    )
    tables: ClassVar[Sequence[Table]] = (cost_calls, cost_runs)
    # Not partitioned: a batch holds many runs' calls, and a call priced twice may be in
    # two replicas' batches (two aggregates). Rebuilt by one process, whose rate is per
    # batch of hundreds of calls (bench/cost_pricing.py measures it).
    partitioned: ClassVar[bool] = False

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        columns = columns_of(events)
        if not columns["llm_event_id"]:
            return
        raw: Any = (await conn.get_raw_connection()).driver_connection  # asyncpg's
        if raw is None:
            raise RuntimeError("the spend projection needs a live asyncpg connection")
        await raw.execute(_CREATE_STAGE)
        rows = zip(*columns.values(), strict=True)  # tuples made in C, not per call here
        await raw.copy_records_to_table(_STAGE, records=rows, columns=_STORED)
        await raw.execute(_FOLD)
