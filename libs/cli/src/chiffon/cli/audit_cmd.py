"""``chiffon audit``: a run's timeline, and failures for post-mortems.

``chiffon audit RUN_ID [--format text|json|html]`` reads ``GET /v1/runs/{id}/audit``
and renders it here (text for a terminal, the JSON as the API sends it, or the
self-contained HTML report); ``chiffon audit failures --since 7d`` reads
``GET /v1/audit/failures``. Both need a viewer key.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.http_client import gateway_client
from chiffon.cli.text import printable

FAILURES = "failures"


class Format(StrEnum):
    text = "text"
    json = "json"
    html = "html"


async def _get(path: str, params: dict[str, str] | None = None) -> Any:
    client = gateway_client(required=True)
    assert client is not None
    async with client:
        return await client._json("GET", path, params=params)


def _failures_table(report: dict[str, Any]) -> str:
    groups = report["groups"]
    if not groups:
        return f"no failures since {report['since']}\n"
    lines = [
        f"failures since {report['since']}, latest first",
        f"{'LAST':<26} {'ERROR':<24} {'WORKFLOW':<20} {'AGENT':<20} {'RUNS':>5} {'NODES':>5}  "
        "NODE IDS / LAST MESSAGE",
    ]
    for g in groups:
        lines.append(
            f"{g['last_at'][:25]:<26} {printable(g['error_type'])[:24]:<24} "
            f"{printable(g['workflow'] or '-')[:20]:<20} {printable(g['agent_id'] or '-')[:20]:<20} "
            f"{g['failed_runs']:>5} {g['failed_nodes']:>5}  {printable(', '.join(g['nodes']))[:60]}"
        )
        if g["last_message"]:
            lines.append(f"{'':<26} {printable(g['last_message'])[:110]}")
        if g["recent_runs"]:
            lines.append(f"{'':<26} runs: {' '.join(g['recent_runs'])}")
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("audit")
    def audit(
        target: str = typer.Argument(
            ..., metavar="RUN_ID|failures", help="A run id, or `failures` for the failures report."
        ),
        output_format: Format = typer.Option(
            Format.text, "--format", "-f", help="text, json or html (a self-contained report)."
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write to this file instead of standard output."
        ),
        since: str | None = typer.Option(
            None, "--since", help="failures: how far back (30m, 12h, 7d, 2w; default 7d)."
        ),
        workflow: str | None = typer.Option(None, "--workflow", help="failures: of this workflow."),
        agent: str | None = typer.Option(None, "--agent", help="failures: on this agent (its id)."),
    ) -> None:
        """A run's audit record: who started it with which key, the workflow version, every
        node attempt, model call (model, tokens, cost), approval and agent task. Or, with
        `failures`, failed runs and nodes grouped by error type, workflow and agent."""
        if target == FAILURES:
            if output_format is Format.html:
                raise codes.fail("failures: --format is text or json", codes.USAGE)
            params = {"since": since or "7d"}
            if workflow:
                params["workflow"] = workflow
            if agent:
                params["agent"] = agent
            report = codes.run_async(lambda: _get("/v1/audit/failures", params))
            text = (
                json.dumps(report, indent=2) + "\n"
                if output_format is Format.json
                else _failures_table(report)
            )
        else:
            if since or workflow or agent:
                raise codes.fail("--since, --workflow and --agent go with `failures`", codes.USAGE)
            record = codes.run_async(lambda: _get(f"/v1/runs/{quote(target, safe='')}/audit"))
            from chiffon.audit.render import RENDERERS  # jinja2 and the templates: 0.45 s

            text = RENDERERS[output_format.value](record)
        if output is None:
            typer.echo(text, nl=False)
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as error:
            raise codes.fail(f"cannot write {output}: {error.strerror}", codes.USAGE) from None
        typer.echo(f"wrote {output}", err=True)
