"""Folds ``cost.call.priced`` into ``cost_calls`` (a row per call) and ``cost_runs`` (a
row per run).

A batch goes in with one binary COPY into a staging table and one statement: the calls
are inserted (a call already there, priced again after JetStream's duplicate window, is
skipped), and only those inserted are added to their runs' totals. So a run's total is
the sum of its calls' rows, whatever the stream holds twice, and a rebuild gives the same
totals to the cent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from chiffon.cost.readmodel import cost_calls, cost_runs
from chiffon.events.costs import CallPriced
from chiffon.eventstore import RecordedEvent
from chiffon.projections import Projection

_COLUMNS = [column.name for column in cost_calls.columns]
_COLUMN_LIST = ", ".join(f'"{name}"' for name in _COLUMNS)
_STAGE = "_stage_cost_calls"

_FOLD = f"""
WITH inserted AS (
    INSERT INTO cost_calls ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM {_STAGE}
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


def call_row(payload: CallPriced) -> tuple[Any, ...]:
    """A ``cost_calls`` row, in column order."""
    at = payload.called_at
    return (
        payload.llm_event_id,
        payload.run_id,
        payload.workflow,
        payload.key_id,
        payload.agent_id,
        payload.node_id,
        payload.provider,
        payload.model,
        at,
        at.date(),
        f"{at.year:04d}-{at.month:02d}",
        payload.prompt_tokens,
        payload.completion_tokens,
        payload.cached_read_tokens,
        payload.cache_write_tokens,
        payload.reasoning_tokens,
        payload.cost_usd,
        payload.source,
    )


class SpendProjection(Projection):
    name: ClassVar[str] = "cost.spend"
    context: ClassVar[str] = "COSTS"
    event_types: ClassVar[frozenset[str] | None] = frozenset({CallPriced.event_type})
    tables: ClassVar[Sequence[Table]] = (cost_calls, cost_runs)
    partitioned: ClassVar[bool] = True  # a run's rows come from its own cost aggregate

    async def apply(self, conn: AsyncConnection, events: Sequence[RecordedEvent]) -> None:
        rows: dict[str, tuple[Any, ...]] = {}
        for event in events:
            payload = event.payload
            if isinstance(payload, CallPriced) and payload.llm_event_id not in rows:
                rows[payload.llm_event_id] = call_row(payload)
        if not rows:
            return
        raw: Any = (await conn.get_raw_connection()).driver_connection  # asyncpg's
        if raw is None:
            raise RuntimeError("the spend projection needs a live asyncpg connection")
        await raw.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE cost_calls) ON COMMIT DELETE ROWS"
        )
        await raw.copy_records_to_table(_STAGE, records=list(rows.values()), columns=_COLUMNS)
        await raw.execute(_FOLD)
