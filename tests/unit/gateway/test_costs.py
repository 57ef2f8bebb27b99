"""The gateway's pure cost pieces: amounts as the API writes them, report bounds, the
dashboard's bars, and the budget body's amounts (refused before any command)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from chiffon.gateway.costs import BadRange, CostGroup, daily_bars, parse_range, report, usd
from chiffon.gateway.schemas import BudgetPut


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0.0000117000"), "0.0000117"),
        (Decimal("1.17E-5"), "0.0000117"),
        (Decimal("12.50"), "12.5"),
        (Decimal("1E+3"), "1000"),
        (Decimal("0E-12"), "0"),
        (None, "0"),
        (3, "3"),
    ],
)
def test_amounts_are_plain_decimal_strings(amount: Any, shown: str) -> None:
    assert usd(amount) == shown


def test_a_date_is_a_whole_utc_day_and_to_includes_it() -> None:
    start, end = parse_range("2026-12-01", "2026-12-07")
    assert start == datetime(2026, 12, 1, tzinfo=UTC)
    assert end == datetime(2026, 12, 8, tzinfo=UTC)


def test_bounds_past_the_calendar_leave_the_range_open() -> None:
    start, end = parse_range("0001-01-01T00:00:00+05:00", "9999-12-31")
    assert start == datetime.min.replace(tzinfo=UTC)
    assert end == datetime.max.replace(tzinfo=UTC)


def test_a_date_time_is_exact_utc_without_an_offset() -> None:
    start, end = parse_range("2026-12-01T10:00:00+02:00", "2026-12-01T12:30")
    assert start == datetime(2026, 12, 1, 8, tzinfo=UTC)
    assert end == datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    assert parse_range(None, None) == (None, None)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("yesterday", None, "from"),
        (None, "2026-13-01", "to"),
        ("2026-12-01T25:00", None, "from"),
        ("2026-12-08", "2026-12-07", "to"),
        ("2026-12-07T10:00Z", "2026-12-07T10:00Z", "to"),
    ],
)
def test_bad_bounds_name_their_parameter(start: str | None, end: str | None, field: str) -> None:
    with pytest.raises(BadRange) as raised:
        parse_range(start, end)
    assert raised.value.field == field


def group(key: str, cost: str, calls: int = 1, unknown: int = 0) -> CostGroup:
    return CostGroup(key, Decimal(cost), calls, unknown, 10 * calls, 5 * calls)


def test_the_report_totals_known_spend_exactly() -> None:
    groups = [group("a", "0.1"), group("b", "0.2"), group("c", "0", calls=2, unknown=2)]
    answer = report("model", groups)
    assert answer["total_usd"] == "0.3"  # not 0.30000000000000004
    assert answer["groups"][2] == {
        "key": "c",
        "cost_usd": "0",
        "calls": 2,
        "unknown_calls": 2,
        "prompt_tokens": 20,
        "completion_tokens": 10,
    }


def test_a_bar_per_day_scaled_to_the_most_expensive() -> None:
    today = date(2026, 12, 7)
    days = [group("2026-12-07", "2"), group("2026-12-01", "0.0001"), group("2026-11-08", "1")]
    bars, top = daily_bars(days, today, days=30, width=300, height=100)
    assert top == Decimal(2)
    assert len(bars) == 30
    assert bars[0].day == "2026-11-08" and bars[-1].day == "2026-12-07"
    assert [b.x for b in bars] == sorted(b.x for b in bars)
    assert bars[-1].height == 100 and bars[-1].y == 0
    assert bars[0].height == 50 and bars[0].y == 50
    tiny = next(b for b in bars if b.day == "2026-12-01")
    assert tiny.height == 1.0 and tiny.cost_usd == "0.0001"  # visible, not a sliver of 0.005
    empty = next(b for b in bars if b.day == "2026-12-02")
    assert empty.height == 0 and empty.cost_usd == "0" and empty.calls == 0


def test_nothing_spent_draws_empty_bars() -> None:
    bars, top = daily_bars([], date(2026, 12, 7))
    assert top == 0 and len(bars) == 30 and all(b.height == 0 for b in bars)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("0.50", Decimal("0.50")),
        (0.5, Decimal("0.5")),
        (0.1, Decimal("0.1")),  # the number's text, not the binary float 0.1000000000000000055…
        (3, Decimal(3)),
        (" 2 ", Decimal(2)),
        ("0.000000000001", Decimal("1E-12")),
        (None, None),
    ],
)
def test_amounts_as_strings_or_numbers(given: Any, kept: Decimal | None) -> None:
    assert BudgetPut.model_validate({"period": "day", "hard_usd": given}).hard_usd == kept


@pytest.mark.parametrize(
    "given",
    ["-1", -0.01, "NaN", "nan", "Infinity", "-inf", "lots", "", True, [], {}, "1e13",
     "0.0000000000001"],
)  # fmt: skip
def test_bad_amounts_are_refused(given: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        BudgetPut.model_validate({"period": "day", "soft_usd": given})
    assert [e["loc"] for e in raised.value.errors()] == [("soft_usd",)]


def test_the_costs_page_shows_a_reached_soft_limit_and_escapes_names() -> None:
    from types import SimpleNamespace

    from chiffon.gateway.dashboard import templates

    bars, top = daily_bars([group("2026-12-07", "0.42")], date(2026, 12, 7))
    budget = {
        "id": "workflow_triage",
        "period": "day",
        "spent_usd": "0.42",
        "reserved_usd": "0.01",
        "soft_usd": "0.40",
        "hard_usd": "0.50",
        "timezone": "Europe/Berlin",
        "period_end": "2026-12-07T23:00:00+00:00",
        "soft_reached": True,
    }
    html = templates.env.get_template("costs.html").render(
        request=SimpleNamespace(url=SimpleNamespace(path="/costs")),
        me=SimpleNamespace(role="viewer", key_id="k", name="viewer"),
        csrf="",
        is_admin=False,
        spend={
            "bars": bars,
            "top_usd": usd(top),
            "total": "0.42",
            "calls": 1,
            "unknown_calls": 0,
            "workflows": [group("<script>x</script>", "0.42").public()],
            "models": [],
        },
        budgets=[budget, {**budget, "id": "global", "soft_reached": False}],
        notices=[],
        since=date(2026, 11, 8),
        chart_width=720,
        chart_height=160,
    )
    rows = html.split('id="budgets"')[1].split("<tr")
    triage = next(r for r in rows if "workflow_triage" in r)
    assert 'class="soft-reached"' in triage and "soft limit reached" in triage
    assert "2026-12-07 23:00:00" in triage
    other = next(r for r in rows if ">global<" in r)
    assert "soft limit reached" not in other
    assert html.count('class="bar-day"') == 30
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
