"""Bulk upserts for projections: binary COPY into a staging table, then one INSERT.

About twice as fast as an executemany of INSERT ... ON CONFLICT for a batch of a
thousand rows, which is what lets a rebuild replay tens of thousands of events a
second. It runs on the projection's own connection, inside its transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import JSON, Table
from sqlalchemy.ext.asyncio import AsyncConnection


def _json(value: Any) -> str:
    # orjson: a tenth of json.dumps's time, which was a fifth of a rebuild's apply.
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson cannot write, e.g. an integer beyond 64 bits
        return json.dumps(value)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def bulk_upsert(
    conn: AsyncConnection,
    table: Table,
    rows: Iterable[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    keep: Sequence[str] = (),
) -> int:
    """Insert ``rows`` into ``table``, updating rows whose ``keys`` exist.

    Columns named in ``keep`` keep their stored value on update (e.g. a first-seen
    timestamp). Every row must have every column of the table. Returns the row count.
    """
    records = list(rows)
    if not records:
        return 0
    columns = [column.name for column in table.columns]
    json_columns = [c.name for c in table.columns if isinstance(c.type, JSON)]
    if json_columns:
        records = [
            {
                **row,
                **{n: _json(row[n]) for n in json_columns if row[n] is not None},
            }
            for row in records
        ]
    pick = itemgetter(*columns)
    values = [pick(row) for row in records] if len(columns) > 1 else [(pick(r),) for r in records]
    raw: Any = (await conn.get_raw_connection()).driver_connection  # asyncpg's Connection
    if raw is None:
        raise RuntimeError("bulk_upsert needs a live asyncpg connection")
    stage = _quote(f"_stage_{table.name}")
    target = _quote(table.name)
    await raw.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {target}) ON COMMIT DELETE ROWS"
    )
    await raw.execute(f"TRUNCATE {stage}")
    await raw.copy_records_to_table(stage.strip('"'), records=values, columns=columns)
    updates = ", ".join(
        f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in columns if c not in keys and c not in keep
    )
    column_list = ", ".join(_quote(c) for c in columns)
    conflict = ", ".join(_quote(k) for k in keys)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    # Identifiers come from our own table metadata, quoted; values travel by COPY.
    await raw.execute(
        f"INSERT INTO {target} ({column_list}) SELECT {column_list} FROM {stage} "  # noqa: S608
        f"ON CONFLICT ({conflict}) {action}"
    )
    return len(records)
