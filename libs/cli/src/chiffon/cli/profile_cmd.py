"""``chiffon profile`` and ``chiffon compare``: where a run's time and money went,
through the gateway (a viewer key reads both).

As in ``cost_cmd``, every stored string (a node id, an output) is printed through
``printable`` as Rich ``Text``, never as markup; ``--json`` prints the API's answer.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chiffon.cli import exit_codes as codes
from chiffon.cli.http_client import gateway_client
from chiffon.cli.text import printable

LAST_MAX = 1000  # the gateway's cap on ``last``: asked for more, it answers 422
HIGHLIGHT = "bold red"
DIFFERS = "yellow"
WAITS = ("model_ms", "agent_ms", "human_ms", "paused_ms", "own_ms")
WAIT_HEADERS = {
    "model_ms": "MODEL",
    "agent_ms": "AGENT",
    "human_ms": "PERSON",
    "paused_ms": "PAUSED",
    "own_ms": "CHIFFON",
}
OUTPUT_CHARS = 48  # of each output shown in a comparison's row (--json has them whole)


# -- formatting (pure: the unit tests call these) ---------------------------------------


def duration(ms: Any) -> str:
    """``850 ms``, ``12.4 s``, ``3 min 05 s``; ``-`` when unknown."""
    if not isinstance(ms, int | float):
        return "-"
    sign, ms = ("-" if ms < 0 else ""), abs(ms)
    if ms < 10_000:
        return f"{sign}{ms:.0f} ms"
    if ms < 120_000:
        return f"{sign}{ms / 1000:.1f} s"
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{sign}{minutes} min {seconds:02d} s"


def _share(value: Any) -> str:
    return f"{value * 100:.0f}%" if isinstance(value, int | float) else "-"


def _cell(value: Any) -> Text:
    return Text(printable(str(value)))


def profile_table(profile: dict[str, Any], *, attempts: bool = False) -> Table:
    """One row per node (per attempt with ``attempts``); the bottleneck in bold red."""
    title = (
        f"Run {printable(str(profile.get('run_id')))} · "
        f"{printable(str(profile.get('workflow') or '?'))} v{profile.get('version') or '?'} · "
        f"{printable(str(profile.get('status')))} in {duration(profile.get('wall_ms'))}"
    )
    bottleneck = profile.get("bottleneck")
    caption = (
        f"bottleneck: {printable(str(bottleneck))} (over half of the run)"
        if bottleneck
        else "no node took over half of the run"
    )
    table = Table(title=title, caption=caption)
    table.add_column("NODE")
    if attempts:
        table.add_column("ITER.", justify="right")
        table.add_column("ATTEMPT", justify="right")
    table.add_column("TYPE")
    table.add_column("STATUS")
    if not attempts:
        table.add_column("RETRIES", justify="right")
    table.add_column("START", justify="right")
    table.add_column("WALL", justify="right")
    table.add_column("SHARE", justify="right")
    run_wall = profile.get("wall_ms") or 0
    rows = profile.get("spans" if attempts else "nodes") or []
    # A wait no node had (no agent, nobody approving) is a column of zeros: left out,
    # so the table fits a terminal. Chiffon's own time is always shown.
    waits = [f for f in WAITS if f == "own_ms" or any(row.get(f) for row in rows)]
    for field in waits:
        table.add_column(WAIT_HEADERS[field], justify="right")
    for row in rows:
        node_id = row.get("node_id", "")
        share = row.get("share")
        if attempts:
            share = (row.get("wall_ms") or 0) / run_wall if run_wall else None
        cells = [_cell(node_id)]
        if attempts:
            cells += [_cell(row.get("iteration", "")), _cell(row.get("attempt", ""))]
        cells += [_cell(row.get("node_type", "")), _cell(row.get("status", ""))]
        if not attempts:
            cells.append(_cell(row.get("retries", 0)))
        cells += [
            Text(duration(row.get("start_ms"))),
            Text(duration(row.get("wall_ms"))),
            Text(_share(share)),
            *(Text(duration(row.get(f))) for f in waits),
        ]
        table.add_row(*cells, style=HIGHLIGHT if node_id == bottleneck else None)
    return table


def _spread(stats: Any, field: str = "p50") -> str:
    return duration(stats.get(field)) if isinstance(stats, dict) else "-"


def workflow_table(summary: dict[str, Any]) -> Table:
    """Per node, p50/p95/p99 of its wall time and the medians of its waits; a node that
    usually holds over half of the run (median share) in bold red."""
    runs = summary.get("wall_ms")
    title = f"{printable(str(summary.get('workflow')))}: {summary.get('runs', 0)} finished runs" + (
        f" · run p50 {_spread(runs)} p95 {_spread(runs, 'p95')} p99 {_spread(runs, 'p99')}"
        if runs
        else ""
    )
    table = Table(title=title)
    table.add_column("NODE")
    table.add_column("TYPE")
    table.add_column("RUNS", justify="right")
    for name in ("P50", "P95", "P99"):
        table.add_column(name, justify="right")
    for name in ("MODEL P50", "AGENT P50", "CHIFFON P50", "SHARE P50", "RETRIES"):
        table.add_column(name, justify="right")
    for node in summary.get("nodes") or []:
        wall, share = node.get("wall_ms"), node.get("share") or {}
        median_share = share.get("p50") if isinstance(share, dict) else None
        table.add_row(
            _cell(node.get("node_id", "")),
            _cell(node.get("node_type", "")),
            _cell(node.get("runs", 0)),
            Text(_spread(wall)),
            Text(_spread(wall, "p95")),
            Text(_spread(wall, "p99")),
            Text(_spread(node.get("model_ms"))),
            Text(_spread(node.get("agent_ms"))),
            Text(_spread(node.get("own_ms"))),
            Text(_share(median_share)),
            _cell(node.get("retries", 0)),
            style=HIGHLIGHT if isinstance(median_share, float) and median_share > 0.5 else None,
        )
    return table


def _output(side: dict[str, Any] | None) -> str:
    if side is None:
        return "(did not run)"
    if side.get("outputs_ref"):
        return f"(stored: {side['outputs_ref']})"
    outputs = side.get("outputs")
    if outputs is None:
        return "(none yet)"
    text = json.dumps(outputs, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= OUTPUT_CHARS else text[: OUTPUT_CHARS - 1] + "…"


def _side(side: dict[str, Any] | None, field: str) -> str:
    if side is None:
        return "-"
    return duration(side.get(field)) if field.endswith("_ms") else str(side.get(field, "-"))


def _delta(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return ("+" if value > 0 else "") + duration(value)
    return ("+" if not str(value).startswith("-") and str(value) != "0" else "") + str(value)


def compare_table(diff: dict[str, Any]) -> Table:
    """Node by node: wall time, spend and outputs of a and b, b's difference; a node
    whose outputs differ in yellow."""
    a, b = diff.get("a") or {}, diff.get("b") or {}
    title = (
        f"a {printable(str(a.get('run_id')))} ({printable(str(a.get('status')))}, "
        f"{duration(a.get('wall_ms'))}, {a.get('cost_usd', '0')} USD) · "
        f"b {printable(str(b.get('run_id')))} ({printable(str(b.get('status')))}, "
        f"{duration(b.get('wall_ms'))}, {b.get('cost_usd', '0')} USD)"
    )
    caption = (
        f"b - a: {_delta(diff.get('wall_delta_ms'), 'ms')}, "
        f"{_delta(diff.get('cost_delta_usd'), 'usd')} USD; "
        + ("same outputs" if diff.get("same_outputs") else "outputs differ")
    )
    table = Table(title=title, caption=caption)
    table.add_column("NODE")
    for name in ("STATUS A", "STATUS B", "WALL A", "WALL B", "Δ WALL"):
        table.add_column(name, justify="right" if "WALL" in name else "left")
    for name in ("USD A", "USD B", "Δ USD"):
        table.add_column(name, justify="right")
    table.add_column("OUTPUTS A")
    table.add_column("OUTPUTS B")
    for node in diff.get("nodes") or []:
        left, right = node.get("a"), node.get("b")
        table.add_row(
            _cell(node.get("node_id", "")),
            _cell(_side(left, "status")),
            _cell(_side(right, "status")),
            Text(_side(left, "wall_ms")),
            Text(_side(right, "wall_ms")),
            Text(_delta(node.get("wall_delta_ms"), "ms")),
            _cell(_side(left, "cost_usd")),
            _cell(_side(right, "cost_usd")),
            _cell(_delta(node.get("cost_delta_usd"), "usd")),
            _cell(_output(left)),
            _cell(_output(right)),
            style=None if node.get("same_outputs") else DIFFERS,
        )
    return table


# -- commands ---------------------------------------------------------------------------


def _segment(value: str) -> str:
    """A path segment as typed: ``/``, ``?`` or ``#`` in it cannot reach another route."""
    return quote(value, safe="")


def _get(path: str, params: dict[str, Any] | None = None) -> Any:
    async def call() -> Any:
        client = gateway_client(required=True)
        assert client is not None
        async with client:
            return await client._json("GET", path, params=params)  # noqa: SLF001 — one generic call

    return codes.run_async(call)


def _show(answer: Any, table: Table | None) -> None:
    if table is None:
        typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        # Piped, Rich would squeeze the table into 80 columns and cut every header.
        Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)


def profile(
    run_id: str | None = typer.Argument(None, metavar="[RUN_ID]", help="The run to profile."),
    workflow: str | None = typer.Option(
        None, "--workflow", "-w", help="Profile this workflow's last finished runs instead."
    ),
    last: int = typer.Option(
        100, "--last", help=f"With --workflow: how many runs (1 to {LAST_MAX})."
    ),
    attempts: bool = typer.Option(
        False, "--attempts", help="One row per attempt and iteration, in start order."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """Where a run's time went (node by node: the model, agents, people, pauses,
    Chiffon; the bottleneck in red), or with --workflow p50/p95/p99 per node across its last runs."""
    if (run_id is None) == (workflow is None):
        raise codes.fail("give a RUN_ID or --workflow NAME (one of them)", codes.USAGE)
    if workflow is not None:
        if not 1 <= last <= LAST_MAX:
            raise codes.fail(f"--last must be from 1 to {LAST_MAX} (got {last})", codes.USAGE)
        answer = _get("/v1/profiles", {"workflow": workflow, "last": last})
        _show(answer, None if as_json else workflow_table(answer))
        return
    assert run_id is not None
    answer = _get(f"/v1/runs/{_segment(run_id)}/profile")
    _show(answer, None if as_json else profile_table(answer, attempts=attempts))


def compare(
    run_a: str = typer.Argument(..., metavar="RUN_A"),
    run_b: str = typer.Argument(..., metavar="RUN_B"),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
) -> None:
    """Two runs side by side, node by node: status, wall time, spend and outputs, with
    b's difference from a (nodes whose outputs differ in yellow)."""
    answer = _get(f"/v1/runs/{_segment(run_a)}/compare/{_segment(run_b)}")
    _show(answer, None if as_json else compare_table(answer))


def register(app: typer.Typer) -> None:
    """Add ``profile`` and ``compare`` to ``app``."""
    app.command("profile")(profile)
    app.command("compare")(compare)
