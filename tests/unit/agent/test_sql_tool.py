"""The sql tool without a database: its arguments and how values become JSON.

The fence itself (a read-only transaction) is proven against the real PostgreSQL in
tests/integration/agent/test_tool_sql.py.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import ipaddress
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from chiffon.agent.tools.base import ToolContext, ToolRefused
from chiffon.agent.tools.sql_tool import SqlTool
from chiffon.agent.tools.sql_values import from_json, iso_duration, to_json

UTC = datetime.UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (42, 42),
        (2**53, 2**53),
        (2**53 + 1, "9007199254740993"),  # past a double's exact integers
        (-(2**63), "-9223372036854775808"),
        (1.5, 1.5),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (decimal.Decimal("12345678901234567890.0100"), "12345678901234567890.0100"),
        (decimal.Decimal("NaN"), "NaN"),
        (datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05+00:00"),
        (datetime.date(2026, 1, 2), "2026-01-02"),
        (datetime.time(3, 4, 5, 600000), "03:04:05.600000"),
        (datetime.timedelta(days=1, hours=2, minutes=3, seconds=4.5), "P1DT2H3M4.5S"),
        (b"\x00\xff", "AP8="),
        (memoryview(b"ab"), "YWI="),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (ipaddress.ip_address("10.0.0.1"), "10.0.0.1"),
        (ipaddress.ip_network("10.0.0.0/8"), "10.0.0.0/8"),
        ([1, [2, None]], [1, [2, None]]),
        ({"a": decimal.Decimal("1.0")}, {"a": "1.0"}),
        (
            asyncpg.Range(1, 10),
            {"lower": 1, "upper": 10, "lower_inc": True, "upper_inc": False, "empty": False},
        ),
    ],
)
def test_values_become_json_that_survives_protobuf(value: Any, expected: Any) -> None:
    converted = to_json(value)
    assert converted == expected
    json.dumps(converted, allow_nan=False)  # every answer is strict JSON


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (datetime.timedelta(0), "PT0S"),
        (datetime.timedelta(days=3), "P3D"),
        (datetime.timedelta(minutes=90), "PT1H30M"),
        (datetime.timedelta(microseconds=250), "PT0.00025S"),
        (-datetime.timedelta(hours=1), "-PT1H"),
    ],
)
def test_intervals_are_iso_8601_durations(duration: datetime.timedelta, text: str) -> None:
    assert iso_duration(duration) == text


def test_whole_doubles_from_protobuf_become_integers_again() -> None:
    assert from_json([3.0, 2.5, "3", [1.0], {"n": 2.0}, True]) == [3, 2.5, "3", [1], {"n": 2}, True]
    assert type(from_json(3.0)) is int


def _tool() -> SqlTool:
    return SqlTool(
        databases={"inventory": "postgresql://reader@127.0.0.1:1/inventory"},
        max_rows=10,
        max_bytes=1 << 20,
        timeout=5.0,
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"query": "SELECT 1"}, "unknown database None; this agent has ['inventory']"),
        ({"database": "billing", "query": "SELECT 1"}, "unknown database 'billing'"),
        ({"database": "inventory", "query": "  "}, "query must be a text"),
        ({"database": "inventory", "query": "SELECT 1", "params": "1"}, "params must be a list"),
        ({"database": "inventory", "query": "SELECT 1", "rows": 5}, "unknown argument(s) ['rows']"),
    ],
)
async def test_malformed_tasks_are_refused_before_any_connection(
    arguments: dict[str, Any], message: str, tmp_path: Path
) -> None:
    tool = _tool()
    ctx = ToolContext(
        task_id="t",
        timeout=5.0,
        cancelled=asyncio.get_running_loop().create_future(),
        on_line=lambda stream, text: None,
        scratch_root=tmp_path,
    )
    with pytest.raises(ToolRefused) as raised:
        await tool.run(arguments, ctx)
    assert raised.value.error_type == "invalid_arguments"
    assert message in raised.value.message
    await tool.close()
