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
``called_at``. ``called_at`` and ``cost_usd`` travel as text (pydantic writes a batch's
column of them as strings in one call, ``model_dump(mode="json")``) into a stage whose two
columns are text, and PostgreSQL casts them: asyncpg's binary encoders for a ``Decimal``
and for a datetime with pydantic's ``TzInfo`` were 6-8 of the ~9 us of client CPU a call
cost in the COPY; as text 4 us in all, for about 2.5 us more of PostgreSQL's (measured
side by side on the same 3,000 calls). Both are exact: the decimal's digits as written,
the time with its offset and microseconds. (The columns as arrays of one
``INSERT .. SELECT FROM unnest(..)`` cost more: asyncpg checks each array element against
three ``collections.abc`` classes, 48 Python-level ``isinstance`` calls per call; the
event's JSON as one ``jsonb`` parameter spread by PostgreSQL cost it 10 us more per call.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.cost.readmodel import cost_calls, cost_runs
from chiffon.events.costs import CALL_COLUMNS, CallPriced, CallsPriced
from chiffon.eventstore import RecordedEvent
from chiffon.projections import Projection

_STORED = [name for name in CALL_COLUMNS if name in cost_calls.columns]  # not attempt
_NAMES = ", ".join(f'"{name}"' for name in _STORED)
# Sent as text, cast by PostgreSQL to cost_calls' types.
_AS_TEXT = {"called_at": "timestamptz", "cost_usd": "numeric"}
_STAGE = "_stage_priced_calls_text"
# cost_calls' columns but day and month, without its constraints (checked on insert);
# called_at and cost_usd as text.
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS SELECT "  # noqa: S608
    + ", ".join(f'"{n}"::text AS "{n}"' if n in _AS_TEXT else f'"{n}"' for n in _STORED)
    + " FROM cost_calls WITH NO DATA"
)
_STAGED = ", ".join(
    f'"{n}"::{_AS_TEXT[n]} AS "{n}"' if n in _AS_TEXT else f'"{n}"' for n in _STORED
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


def columns_of(events: Sequence[RecordedEvent]) -> dict[str, list[Any]]:
    """The priced calls of ``events``, as ``cost_calls`` columns, in stream order;
    ``called_at`` and ``cost_usd`` as their JSON strings (ISO 8601 with the offset, the
    decimal's digits; None for an unknown price)."""
    columns: dict[str, list[Any]] = {name: [] for name in _STORED}
    for event in events:
        payload = event.payload
        if isinstance(payload, CallsPriced):
            texts = payload.model_dump(mode="json", include=set(_AS_TEXT))
            for name, column in columns.items():
                column.extend(texts[name] if name in _AS_TEXT else getattr(payload, name))
        elif isinstance(payload, CallPriced):
            texts = payload.model_dump(mode="json", include=set(_AS_TEXT))
            for name, column in columns.items():
                column.append(texts[name] if name in _AS_TEXT else getattr(payload, name))
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
