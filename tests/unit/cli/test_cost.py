"""How ``chiffon cost`` prints a spend report and budgets: the most expensive row
highlighted, a total row, CSV a spreadsheet can open safely, stored names never obeyed
as markup or control characters, soft alerts visible."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich.table import Table

from chiffon.cli.cost_cmd import (
    HIGHLIGHT,
    SOFT_ALERT,
    budgets_table,
    render,
    report_csv,
    report_table,
)

ANSWER: dict[str, Any] = {
    "group_by": "provider",
    "groups": [
        {
            "key": "anthropic",
            "cost_usd": "0.001",
            "calls": 1,
            "unknown_calls": 0,
            "prompt_tokens": 100,
            "completion_tokens": 50,
        },
        {
            "key": "openai",
            "cost_usd": "0.0000117",
            "calls": 2,
            "unknown_calls": 0,
            "prompt_tokens": 22,
            "completion_tokens": 14,
        },
        {
            "key": "mystery",
            "cost_usd": "0",
            "calls": 3,
            "unknown_calls": 3,
            "prompt_tokens": 4,
            "completion_tokens": 2,
        },
    ],
    "total_usd": "0.0010117",
}


def row_styles(table: Table) -> list[Any]:
    return [row.style for row in table.rows]


def test_the_most_expensive_row_is_highlighted_and_a_total_row_ends_the_table() -> None:
    table = report_table(ANSWER)
    assert row_styles(table) == [HIGHLIGHT, None, None, "bold"]
    text = render(table, color=False)
    lines = [line for line in text.splitlines() if "│" in line]
    assert "anthropic" in lines[0] and "0.001" in lines[0]
    # the total: the API's amount, and calls, unpriced calls and tokens added up
    assert [cell.strip() for cell in lines[-1].split("│")[1:-1]] == [
        "total",
        "0.0010117",
        "6",
        "3",
        "126",
        "66",
    ]


def test_highlight_shows_as_colour_on_a_terminal() -> None:
    coloured = render(report_table(ANSWER), color=True)
    assert "\x1b[1;31m" in coloured  # bold red: the anthropic row
    assert "\x1b[" not in render(report_table(ANSWER), color=False)


def test_nothing_spent_highlights_nothing() -> None:
    free = {
        "group_by": "model",
        "groups": [{"key": "chiffon/echo", "cost_usd": "0", "calls": 4}],
        "total_usd": "0",
    }
    assert row_styles(report_table(free)) == [None, "bold"]
    assert row_styles(report_table({"group_by": "day", "groups": [], "total_usd": "0"})) == ["bold"]


def test_stored_names_are_shown_not_obeyed() -> None:
    hostile = {
        "group_by": "model",
        "groups": [
            {"key": "[bold red]fake[/]", "cost_usd": "1", "calls": 1},
            {"key": "ok\rFORGED\x1b[31m", "cost_usd": "0.5", "calls": 1},
        ],
        "total_usd": "1.5",
    }
    text = render(report_table(hostile), color=False)
    assert "[bold red]fake[/]" in text
    assert "ok\\rFORGED\\x1b[31m" in text
    assert "\r" not in text and "\x1b" not in text


def test_csv_has_a_header_a_line_per_group_and_no_formulas() -> None:
    rows = list(csv.reader(io.StringIO(report_csv(ANSWER))))
    assert rows[0] == [
        "key",
        "cost_usd",
        "calls",
        "unknown_calls",
        "prompt_tokens",
        "completion_tokens",
    ]
    assert rows[1:] == [
        ["anthropic", "0.001", "1", "0", "100", "50"],
        ["openai", "0.0000117", "2", "0", "22", "14"],
        ["mystery", "0", "3", "3", "4", "2"],
    ]
    formula = {"group_by": "key", "groups": [{"key": "=HYPERLINK(1)", "cost_usd": "0"}]}
    assert list(csv.reader(io.StringIO(report_csv(formula))))[1][0] == "'=HYPERLINK(1)"


def test_budgets_show_spend_limits_and_a_soft_alert() -> None:
    budgets: list[dict[str, Any]] = [
        {
            "id": "workflow_triage",
            "scope": "workflow",
            "scope_id": "triage",
            "period": "day",
            "hard_usd": "0.50",
            "soft_usd": "0.40",
            "timezone": "Europe/Berlin",
            "spent_usd": "0.42",
            "reserved_usd": "0.01",
            "period_start": "2026-12-06T23:00:00Z",
            "period_end": "2026-12-07T23:00:00Z",
            "soft_reached": True,
        },
        {
            "id": "global",
            "scope": "global",
            "scope_id": "global",
            "period": "lifetime",
            "hard_usd": None,
            "soft_usd": "100",
            "timezone": "UTC",
            "spent_usd": "3",
            "reserved_usd": "0",
            "period_start": None,
            "period_end": None,
            "soft_reached": False,
        },
    ]
    table = budgets_table(budgets)
    assert row_styles(table) == [SOFT_ALERT, None]
    text = render(table, color=False)
    triage = next(line for line in text.splitlines() if "workflow_triage" in line)
    for shown in ("0.42", "0.01", "0.40", "0.50", "Europe/Berlin", "2026-12-07 23:00:00"):
        assert shown in triage
    assert "soft limit reached" in triage
    lifetime = next(line for line in text.splitlines() if "global" in line)
    assert "soft limit reached" not in lifetime and " - " in lifetime
