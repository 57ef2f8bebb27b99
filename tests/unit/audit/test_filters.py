"""How the audit API reads its time filters: durations and date bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chiffon.gateway.problems import ValidationFailed
from chiffon.gateway.routers.audit import _bound, parse_since

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        (" 2w ", timedelta(weeks=2)),
    ],
)
def test_since_is_a_duration_back_from_now(text: str, span: timedelta) -> None:
    assert parse_since(text, NOW) == NOW - span


@pytest.mark.parametrize(
    "text", ["", "7", "d", "-7d", "7 d", "7y", "1e3d", "9999999d", "3661d", "７d"]
)
def test_a_since_that_is_no_duration_or_too_long_is_refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_since(text, NOW)


def test_bounds_past_the_calendar_are_clamped_not_errors() -> None:
    assert _bound("9999-12-31", "to", end=True) == datetime.max.replace(tzinfo=UTC)
    assert _bound("0001-01-01T00:00:00+05:00", "from", end=False) == datetime.min.replace(
        tzinfo=UTC
    )
    assert _bound("2026-12-07", "to", end=True) == datetime(2026, 12, 8, tzinfo=UTC)
    assert _bound(None, "from", end=False) is None
    with pytest.raises(ValidationFailed):
        _bound("last tuesday", "from", end=False)
