"""``chiffon run FILE_OR_NAME`` and ``chiffon runs list / show / follow / cancel / approve / approvals``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.client import ChiffonClient
from chiffon.cli.connect import open_client
from chiffon.cli.text import echo, secho
from chiffon.events.runs import RUN_ENDING_STATUS, RUN_STATUSES

if TYPE_CHECKING:
    from chiffon.readmodels.views import ApprovalPublic, RunPublic, RunSummary

app = typer.Typer(help="Runs: list, show, follow, cancel, approve.", no_args_is_help=True)


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` (v as text; the workflow's input types convert it) or ``k:=json``."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        value: Any
        if ":=" in pair and pair.index(":=") < pair.index("=") + 1:
            key, raw = pair.split(":=", 1)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as error:
                raise codes.fail(
                    f"--input {pair!r}: the value after := is not JSON ({error.msg})", codes.USAGE
                ) from None
        elif "=" in pair:
            key, value = pair.split("=", 1)
            stripped = value.strip()
            if stripped[:1] in ("[", "{"):
                with contextlib.suppress(json.JSONDecodeError):
                    value = json.loads(stripped)
        else:
            raise codes.fail(f"--input {pair!r}: expected KEY=VALUE (or KEY:=JSON)", codes.USAGE)
        if not key.strip():
            raise codes.fail(f"--input {pair!r}: empty name", codes.USAGE)
        inputs[key.strip()] = value
    return inputs


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- chiffon run ------------------------------------------------------------------------


def run(
    target: str = typer.Argument(
        ..., metavar="FILE_OR_NAME", help="A workflow file (registered first) or a registered name."
    ),
    inputs: list[str] = typer.Option([], "--input", "-i", help="KEY=VALUE (repeat), or KEY:=JSON."),  # noqa: B008
    version: int | None = typer.Option(
        None, "--version", "-v", help="Version of a named workflow (default: latest)."
    ),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Print each node as it runs; exit with the run's end."
    ),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Same key, same request: the same run."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the start result as JSON."),
) -> None:
    """Start a run of a workflow. With --follow, exit 0 succeeded, 1 failed, 3 cancelled."""
    values = parse_inputs(inputs)
    path = Path(target)
    is_file = path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file()
    source: tuple[str, str] | None = None
    pinned: int | None
    if is_file:
        from chiffon.cli.workflow_cmd import read_spec  # the workflow model: 0.4 s of CPU

        spec, text, source_format = read_spec(path)
        name, pinned = spec.name, spec.version
        if version is not None and version != pinned:
            raise codes.fail(
                f"{path} is version {pinned}; --version {version} does not match", codes.USAGE
            )
        source = (text, source_format)
    else:
        name, pinned = target, version

    async def main() -> int:
        async with await open_client() as client:
            if source is not None:
                await client.register_workflow(source[0], source_format=source[1])
            started = await client.start_run(
                name, inputs=values, version=pinned, idempotency_key=idempotency_key
            )
            if as_json:
                echo(json.dumps(started))
            else:
                again = (
                    ""
                    if started.get("created", True)
                    else " (existing run for this idempotency key)"
                )
                echo(
                    f"run {started['run_id']}: {started['workflow']} v{started['version']} {started['status']}{again}"
                )
            if not follow:
                if not as_json:
                    echo(f"  follow it: chiffon runs follow {started['run_id']}")
                return codes.OK
            return await follow_run(client, str(started["run_id"]))

    raise typer.Exit(codes.run_async(main))


async def follow_run(
    client: ChiffonClient, run_id: str, after_seq: int = 0, *, follow: bool = True
) -> int:
    """Print the run's events as they happen; return the exit code of its end.
    ``follow=False``: what happened so far (``runs logs`` without ``--follow``)."""
    tokens: dict[str, tuple[int, int]] = {}
    async for event in client.follow_run_events(run_id, after_seq, follow=follow, output=True):
        p = event.payload
        t = event.type
        if t == "output":  # an agent task's line, live
            secho(f"    │ {p.get('text', '')}", dim=True, err=p.get("stream") == "stderr")
        elif t == "run.claimed":
            how = "resumed on" if p.get("resumed") else "running on"
            echo(f"  {how} {p['executor']} (pid {p['pid']})")
        elif t == "run.node.started":
            attempt = f" attempt {p['attempt']}" if p["attempt"] > 1 else ""
            again = f" #{p['iteration']}" if p.get("iteration", 1) > 1 else ""
            echo(f"  ▶ {p['node_id']}{again} ({p['node_type']}){attempt}")
        elif t == "run.llm.called":
            if not p.get("ok", True):
                secho(
                    f"    model {p['model']} failed: {_short(p.get('error'), 160)}",
                    fg=typer.colors.YELLOW,
                )
            else:
                before = tokens.get(p["node_id"], (0, 0))
                tokens[p["node_id"]] = (
                    before[0] + p["prompt_tokens"],
                    before[1] + p["completion_tokens"],
                )
        elif t == "run.node.completed":
            spent = tokens.pop(p["node_id"], None)
            used = f"  {spent[0]}+{spent[1]} tokens" if spent else ""
            outputs = f"  {_short(p['outputs'], 80)}" if p.get("outputs") else ""
            secho(
                f"  ✓ {p['node_id']}  {_ms(p['duration_ms'])}{used}{outputs}", fg=typer.colors.GREEN
            )
        elif t == "run.node.failed":
            error = p["error"]
            retry = f"; retry in {_ms(p.get('retry_in_ms'))}" if p.get("will_retry") else ""
            secho(
                f"  ✗ {p['node_id']} attempt {p['attempt']}: {error['type']}: {_short(error['message'], 160)}{retry}",
                fg=typer.colors.YELLOW if p.get("will_retry") else typer.colors.RED,
            )
        elif t == "run.approval.requested":
            secho(
                f"  ⏸ {p['node_id']} waits for approval: {_short(p['message'], 120)}",
                fg=typer.colors.CYAN,
            )
            echo(f"    chiffon runs approve {run_id} {p['node_id']}   (or --reject)")
        elif t == "run.approval.decided":
            verdict = "approved" if p["approved"] else "rejected"
            comment = f": {_short(p['comment'], 400)}" if p.get("comment") else ""
            echo(f"  {verdict} {p['node_id']} by {event.actor}{comment}")
        elif t == "run.memory.read":
            for read in p.get("values") or []:
                found = (
                    f"{read['key']} = {_short(read.get('value'), 80)}"
                    if read.get("key")
                    else "nothing"
                )
                echo(f"    ◇ memory {read['pattern']}: {found}")
        elif t == "run.agent_task.finished":
            used = _task_usage(p)
            if used:
                echo(f"    ⚙ {p.get('agent_id') or 'agent'}: {used}")
        elif t == "run.paused":
            needs = ", ".join(p.get("requires") or []) or "an agent"
            where = f" at {p['node_id']}" if p.get("node_id") else ""
            secho(
                f"  ⏸ paused{where}: {p['reason']} (needs {needs}); it resumes by itself"
                " when an agent can take the task",
                fg=typer.colors.CYAN,
            )
        elif t == "run.resumed":
            echo(f"  resumed: {_short(p.get('reason') or 'by event', 200)}")
        elif t == "run.cancel_requested":
            echo(f"  cancel requested by {event.actor}")
        elif t in RUN_ENDING_STATUS:
            return _summary(RUN_ENDING_STATUS[t], p)
    return codes.UNAVAILABLE


def _task_usage(p: dict[str, Any]) -> str:
    """What an agent task used, as the agent measured it (empty when it said nothing)."""
    parts = []
    if p.get("duration_ms") is not None:
        parts.append(_ms(p["duration_ms"]))
    if p.get("cpu_seconds") is not None:
        parts.append(f"cpu {p['cpu_seconds']:.3f} s")
    if p.get("peak_memory_bytes"):
        parts.append(f"peak memory {p['peak_memory_bytes'] / 2**20:.1f} MiB")
    if p.get("gpu_memory_bytes"):
        parts.append(f"GPU memory {p['gpu_memory_bytes'] / 2**20:.1f} MiB")
    return ", ".join(parts)


def _summary(status: str, payload: dict[str, Any]) -> int:
    color = {"succeeded": typer.colors.GREEN, "failed": typer.colors.RED}.get(
        status, typer.colors.YELLOW
    )
    secho(f"run {status} in {_ms(payload.get('duration_ms'))}", fg=color, bold=True)
    if status == "failed":
        error = payload.get("error") or {}
        where = f" at {error['node_id']}" if error.get("node_id") else ""
        echo(f"  {error.get('type')}{where}: {_short(error.get('message'), 1000)}")
    if status == "cancelled" and payload.get("reason"):
        echo(f"  reason: {_short(payload['reason'], 1000)}")
    for key, value in (payload.get("outputs") or {}).items():
        echo(f"  {key}: {_short(value)}")
    return codes.BY_STATUS[status]


# -- chiffon runs ...


@app.command("list")
def list_runs(
    status: str | None = typer.Option(
        None, "--status", "-s", help=f"One of: {', '.join(RUN_STATUSES)}."
    ),
    workflow: str | None = typer.Option(None, "--workflow", "-w"),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=500),
    cursor: str | None = typer.Option(
        None, "--cursor", help="The next-page cursor a previous list printed."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Runs, newest first."""
    if status is not None and status not in RUN_STATUSES:
        raise codes.fail(
            f"unknown status {status!r}; one of: {', '.join(RUN_STATUSES)}", codes.USAGE
        )

    async def main() -> tuple[list[RunSummary], str | None]:
        async with await open_client() as client:
            return await client.list_runs(
                status=status, workflow=workflow, cursor=cursor, limit=limit
            )

    found, next_cursor = codes.run_async(main)
    if as_json:
        echo(
            json.dumps(
                {"runs": [r.model_dump(mode="json") for r in found], "next_cursor": next_cursor},
                indent=2,
            )
        )
        return
    if not found:
        echo("no runs")
        return
    echo(f"{'RUN':<36}  {'WORKFLOW':<24} {'STATUS':<16} {'DURATION':>9}  {'EXECUTOR':<12} CREATED")
    for r in found:
        echo(
            f"{r.run_id:<36}  {(r.workflow + ' v' + str(r.version)):<24} {r.status:<16} "
            f"{_ms(r.duration_ms):>9}  {(r.executor or '-'):<12} {r.created_at:%Y-%m-%d %H:%M:%S}"
        )
    if next_cursor:
        echo(f"more: chiffon runs list --cursor {next_cursor}")


@app.command()
def show(run_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """A run: status, executor, timings, tokens, nodes, approvals, outputs."""

    async def main() -> RunPublic | None:
        async with await open_client() as client:
            return await client.get_run(run_id)

    found = codes.run_async(main)
    if found is None:
        raise codes.fail(
            f"no run {run_id!r} (a run just started may take a moment to appear)", codes.NOT_FOUND
        )
    if as_json:
        echo(found.model_dump_json(indent=2))
        return
    r = found
    echo(f"run {r.run_id}")
    echo(f"  workflow   {r.workflow} v{r.version}")
    echo(
        f"  status     {r.status}{' (cancel requested)' if r.cancel_requested and r.status not in ('cancelled',) else ''}"
    )
    echo(
        f"  executor   {r.executor or '-'}{f' (pid {r.pid})' if r.pid else ''}{f', claimed {r.claims} times' if r.claims > 1 else ''}"
    )
    if r.paused is not None:
        needs = ", ".join(r.paused.requires) or "an agent"
        echo(f"  paused     {r.paused.reason} at {r.paused.node_id or '-'} (needs {needs})")
    echo(f"  created    {r.created_at:%Y-%m-%d %H:%M:%S} by {r.requested_by}")
    if r.trigger and r.trigger.get("kind") in ("webhook", "schedule"):
        # A delivery's id (its trigger's name first) or a schedule's tick (name@time).
        echo(f"  trigger    {r.trigger['kind']} {r.trigger.get('id') or '-'}")
    echo(f"  duration   {_ms(r.duration_ms)}")
    echo(
        f"  tokens     {r.prompt_tokens} prompt + {r.completion_tokens} completion ({r.llm_calls} calls)"
    )
    if r.inputs:
        echo(f"  inputs     {_short(r.inputs)}")
    if r.error:
        echo(
            f"  error      {r.error.type}{' at ' + r.error.node_id if r.error.node_id else ''}: {_short(r.error.message, 1000)}"
        )
    if r.nodes:
        echo("  nodes:")
        for n in r.nodes:
            extra = f" x{n.iterations}" if n.iterations > 1 else ""
            tries = f", {n.attempts} attempts" if n.attempts > n.iterations else ""
            tokens = (
                f", {n.prompt_tokens}+{n.completion_tokens} tokens"
                if n.prompt_tokens or n.completion_tokens
                else ""
            )
            echo(
                f"    {n.node_id:<20} {n.status:<16} {_ms(n.duration_ms):>8}{extra}{tries}{tokens}"
            )
            if n.error and n.status != "succeeded":
                echo(f"      {n.error.type}: {_short(n.error.message, 120)}")
    for a in r.approvals:
        state = (
            "waiting"
            if a.decided_at is None
            else ("approved" if a.approved else "rejected") + f" by {a.decided_by}"
        )
        echo(f"  approval {a.node_id}: {state} — {_short(a.message, 80)}")
    if r.outputs:
        echo("  outputs:")
        for key, value in r.outputs.items():
            echo(f"    {key}: {_short(value)}")


@app.command("follow")
def follow(run_id: str = typer.Argument(...)) -> None:
    """Print a run's events from its start, then live; exit with its end (0, 1 or 3)."""

    async def main() -> int:
        async with await open_client() as client:
            return await follow_run(client, run_id)

    raise typer.Exit(codes.run_async(main))


@app.command()
def cancel(
    run_id: str = typer.Argument(...),
    reason: str | None = typer.Option(None, "--reason", help="Recorded with the cancellation."),
) -> None:
    """Cancel a run: it stops at its next safe point and records run.cancelled."""

    async def main() -> dict[str, Any]:
        async with await open_client() as client:
            return await client.cancel_run(run_id, reason=reason)

    result = codes.run_async(main)
    if result["status"] == "cancelled":
        echo(f"run {run_id} cancelled")
    else:
        echo(
            f"run {run_id}: cancel requested; it stops at its next safe point ({result['status']})"
        )


@app.command()
def approve(
    run_id: str = typer.Argument(...),
    node: str = typer.Argument(..., help="The approval node's id."),
    reject: bool = typer.Option(False, "--reject", help="Reject instead of approving."),
    comment: str | None = typer.Option(None, "--comment", "-m", help="Recorded with the decision."),
) -> None:
    """Approve (or --reject) an approval node a run waits on."""

    async def main() -> dict[str, Any]:
        async with await open_client() as client:
            return await client.approve(run_id, node, approve=not reject, comment=comment)

    result = codes.run_async(main)
    verdict = "rejected" if reject else "approved"
    echo(f"{verdict} {node} of run {run_id} (run {result['status']})")


@app.command()
def approvals(as_json: bool = typer.Option(False, "--json")) -> None:
    """Approvals waiting for a decision."""

    async def main() -> list[ApprovalPublic]:
        async with await open_client() as client:
            return await client.list_pending_approvals()

    found = codes.run_async(main)
    if as_json:
        echo(json.dumps([a.model_dump(mode="json") for a in found], indent=2))
        return
    if not found:
        echo("no approvals waiting")
        return
    for a in found:
        echo(
            f"{a.run_id}  {a.workflow:<20} {a.node_id:<16} since {a.requested_at:%Y-%m-%d %H:%M}  {_short(a.message, 60)}"
        )
        echo(f"  chiffon runs approve {a.run_id} {a.node_id}   (or --reject)")
