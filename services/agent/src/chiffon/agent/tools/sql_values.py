"""PostgreSQL values as JSON a node's outputs can hold, and a task's JSON as parameters.

A result crosses protobuf's Struct, where every number is a double: integers past 2**53
and decimals (exact by nature) become strings, as do NaN and the infinities, which JSON
has no word for. Times are ISO 8601, bytes base64, composites objects, ranges objects.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import ipaddress
import math
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

_EXACT_DOUBLE = 2**53


def iso_duration(value: datetime.timedelta) -> str:
    """`P1DT2H3M4.5S`; a negative interval is `-P...` (ISO 8601-2 signed durations)."""
    sign = "-" if value < datetime.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    fraction = f"{seconds + value.microseconds / 1e6:.6f}".rstrip("0").rstrip(".")
    time_part = "".join(
        f"{amount}{unit}" for amount, unit in ((hours, "H"), (minutes, "M")) if amount
    )
    if seconds or value.microseconds or not (time_part or value.days):
        time_part += f"{fraction}S"
    days = f"{value.days}D" if value.days else ""
    return f"{sign}P{days}{'T' + time_part if time_part else ''}"


def to_json(value: Any) -> Any:
    """One value of a row, JSON-able."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -_EXACT_DOUBLE <= value <= _EXACT_DOUBLE else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return iso_duration(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, asyncpg.Record):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, Mapping):  # json and jsonb, decoded
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, asyncpg.Range):
        return {
            "lower": to_json(value.lower),
            "upper": to_json(value.upper),
            "lower_inc": value.lower_inc,
            "upper_inc": value.upper_inc,
            "empty": value.isempty,
        }
    if isinstance(value, (uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    # inet/cidr networks, geometric types, bit strings, money, tsvector...: their text.
    return str(value)


def from_json(value: Any) -> Any:
    """A task's parameter: whole doubles back to integers (protobuf made `3` into `3.0`,
    and asyncpg refuses a float for an integer or text parameter)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: from_json(item) for key, item in value.items()}
    return value
