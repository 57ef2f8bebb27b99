"""``chiffon cost report / budgets / budget set / budget remove``: spend and budgets,
through the gateway (reading needs a viewer key; changing a budget, an admin key).

Amounts stay the decimal strings the API sends (never floats); the table sorts nothing
itself: the API answers most expensive first. Every stored string (a model, workflow or
key name) is printed through ``printable`` and as Rich ``Text``, never as markup, so
``[bold]`` in a model name is shown, not obeyed.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chiffon.cli import exit_codes as codes
from chiffon.cli.http_client import GatewayClient, gateway_client
from chiffon.cli.text import printable


class By(StrEnum):
    provider = "provider"
    model = "model"
    workflow = "workflow"
    key = "key"
    day = "day"


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class Period(StrEnum):
    day = "day"
    month = "month"
    lifetime = "lifetime"


app = typer.Typer(help="LLM spend and budgets.", no_args_is_help=True)
budget_app = typer.Typer(help="Set or remove a budget (needs an admin key).", no_args_is_help=True)
app.add_typer(budget_app, name="budget")

HIGHLIGHT = "bold red"
SOFT_ALERT = "bold yellow"
REPORT_COLUMNS = (
    "key",
    "cost_usd",
    "calls",
    "unknown_calls",
    "prompt_tokens",
    "completion_tokens",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# -- formatting (pure: the unit tests call these) -------------------------------------


def _amount(text: Any) -> Decimal:
    try:
        return Decimal(str(text))
    except InvalidOperation:
        return Decimal(0)


def _cell(value: Any) -> Text:
    return Text(printable(str(value)))


def report_table(answer: dict[str, Any]) -> Table:
    """The report as a Rich table: one row per group, the most expensive one highlighted
    (when it cost anything), then a total row."""
    by = str(answer.get("group_by", "key"))
    table = Table(title=f"LLM spend by {printable(by)}", show_footer=False)
    table.add_column(by.upper())
    table.add_column("COST (USD)", justify="right")
    table.add_column("CALLS", justify="right")
    table.add_column("UNPRICED", justify="right")
    table.add_column("PROMPT TOKENS", justify="right")
    table.add_column("COMPLETION TOKENS", justify="right")
    groups = list(answer.get("groups") or [])
    top = max((_amount(g.get("cost_usd")) for g in groups), default=Decimal(0))
    totals = [0, 0, 0, 0]
    for group in groups:
        counts = [
            int(group.get(f) or 0)
            for f in ("calls", "unknown_calls", "prompt_tokens", "completion_tokens")
        ]
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        highlighted = top > 0 and _amount(group.get("cost_usd")) == top
        table.add_row(
            _cell(group.get("key", "")),
            _cell(group.get("cost_usd", "0")),
            *(_cell(c) for c in counts),
            style=HIGHLIGHT if highlighted else None,
        )
    table.add_section()
    table.add_row(
        Text("total"),
        _cell(answer.get("total_usd", "0")),
        *(_cell(c) for c in totals),
        style="bold",
    )
    return table


def _csv_safe(value: Any) -> Any:
    """A spreadsheet must not run a stored name as a formula (``=HYPERLINK(...)``)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def report_csv(answer: dict[str, Any]) -> str:
    """One line per group, header first; amounts as the API wrote them; no total line
    (a sum of the rows is the total)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for group in answer.get("groups") or []:
        writer.writerow([_csv_safe(group.get(c, "")) for c in REPORT_COLUMNS])
    return out.getvalue()


def _limit(value: Any) -> str:
    return "-" if value is None else printable(str(value))


def budgets_table(budgets: list[dict[str, Any]]) -> Table:
    """Budgets with their spend, reservations and limits; a reached soft limit in
    yellow with an alert."""
    table = Table(title="Budgets")
    for name, justify in (
        ("ID", "left"),
        ("PERIOD", "left"),
        ("SPENT", "right"),
        ("RESERVED", "right"),
        ("SOFT", "right"),
        ("HARD", "right"),
        ("TIME ZONE", "left"),
        ("PERIOD ENDS", "left"),
        ("ALERT", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for budget in budgets:
        soft = bool(budget.get("soft_reached"))
        end = budget.get("period_end")
        table.add_row(
            _cell(budget.get("id", "")),
            _cell(budget.get("period", "")),
            _cell(budget.get("spent_usd", "0")),
            _cell(budget.get("reserved_usd", "0")),
            Text(_limit(budget.get("soft_usd"))),
            Text(_limit(budget.get("hard_usd"))),
            _cell(budget.get("timezone", "UTC")),
            Text(printable(str(end)[:19].replace("T", " ")) if end else "-"),
            Text("soft limit reached" if soft else ""),
            style=SOFT_ALERT if soft else None,
        )
    return table


def render(table: Table, *, width: int | None = None, color: bool | None = None) -> str:
    """A table as the terminal shows it (``color`` None: when stdout is a terminal)."""
    console = Console(
        file=io.StringIO(),
        width=width or 160,
        force_terminal=color,
        no_color=color is False,
        highlight=False,
    )
    console.print(table)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


# -- commands ---------------------------------------------------------------------------


async def _client() -> GatewayClient:
    client = gateway_client(required=True)
    assert client is not None
    return client


async def _call(method: str, path: str, **kwargs: Any) -> Any:
    async with await _client() as client:
        return await client._json(method, path, **kwargs)  # noqa: SLF001 — one generic call


def _print(table: Table) -> None:
    Console(highlight=False).print(table)


@app.command()
def report(
    by: By = typer.Option(
        By.provider, "--by", help="Group by provider, model, workflow, key or day."
    ),
    from_: str | None = typer.Option(
        None, "--from", help="From this ISO date (whole UTC day) or date-time."
    ),
    to: str | None = typer.Option(
        None, "--to", help="Up to this ISO date (included) or date-time (excluded)."
    ),
    fmt: Format = typer.Option(Format.table, "--format", help="table, csv or json."),
) -> None:
    """Spend per group, most expensive first (highlighted), with a total."""
    params = {"group_by": by.value}
    if from_:
        params["from"] = from_
    if to:
        params["to"] = to
    answer = codes.run_async(lambda: _call("GET", "/v1/costs", params=params))
    if fmt is Format.json:
        typer.echo(json.dumps(answer, indent=2))
    elif fmt is Format.csv:
        typer.echo(report_csv(answer), nl=False)
    else:
        _print(report_table(answer))


@app.command()
def budgets(
    fmt: Format = typer.Option(Format.table, "--format", help="table or json."),
) -> None:
    """Every budget: spent and reserved in the current period, limits, soft alerts."""
    answer = codes.run_async(lambda: _call("GET", "/v1/budgets"))
    found = list(answer.get("budgets") or [])
    if fmt is Format.json:
        typer.echo(json.dumps(found, indent=2))
    elif fmt is Format.csv:
        raise codes.fail("budgets print as a table or JSON", codes.USAGE)
    elif not found:
        typer.echo("no budgets (spend is not limited)")
    else:
        _print(budgets_table(found))


@budget_app.command("set")
def set_budget(
    scope: str = typer.Argument(..., help="global, workflow, key or run."),
    scope_id: str = typer.Argument(
        ..., metavar="ID", help="global, a workflow name, a key id or a run id."
    ),
    period: Period = typer.Option(..., "--period", help="day, month or lifetime."),
    hard: str | None = typer.Option(
        None, "--hard", help="Hard limit in USD: calls that would cross it do not go out."
    ),
    soft: str | None = typer.Option(None, "--soft", help="Soft limit in USD: an alert."),
    timezone: str = typer.Option(
        "UTC", "--timezone", help="IANA zone the day or month is counted in."
    ),
) -> None:
    """Create or change a budget."""
    body = {"period": period.value, "hard_usd": hard, "soft_usd": soft, "timezone": timezone}
    path = f"/v1/budgets/{_segment(scope)}/{_segment(scope_id)}"
    answer = codes.run_async(lambda: _call("PUT", path, json=body))
    limits = ", ".join(
        f"{name} {answer[field]} USD"
        for name, field in (("hard", "hard_usd"), ("soft", "soft_usd"))
        if answer.get(field) is not None
    )
    typer.echo(
        f"budget {printable(str(answer.get('id')))}: {limits or 'no limits'} per "
        f"{printable(str(answer.get('period')))} ({printable(str(answer.get('timezone')))}); "
        f"spent {printable(str(answer.get('spent_usd', '0')))} USD"
    )


@budget_app.command("remove")
def remove_budget(
    scope: str = typer.Argument(..., help="global, workflow, key or run."),
    scope_id: str = typer.Argument(..., metavar="ID"),
) -> None:
    """Remove a budget: the scope's spend is no longer limited."""
    path = f"/v1/budgets/{_segment(scope)}/{_segment(scope_id)}"
    codes.run_async(lambda: _call("DELETE", path))
    typer.echo(f"removed the budget of {printable(scope)} {printable(scope_id)}")


def _segment(value: str) -> str:
    """A path segment as typed: ``/``, ``?`` or ``#`` in it cannot reach another route."""
    return quote(value, safe="")
