"""What ``chiffon replay --verify`` does and prints (``cli`` keeps the CLI's start fast
by importing this only when the command runs).

Exit codes are the CLI's (``chiffon.cli.exit_codes``, which the executor does not
import): 0 every decision the same, 1 a run diverged or could not be replayed, 2 usage,
4 not found, 6 the event store cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import typer

from chiffon.core.logging import configure_logging
from chiffon.core.settings import ChiffonSettings
from chiffon.events import CATALOG
from chiffon.eventstore import AggregateKey, EventStoreUnavailable, JetStreamEventStore

if TYPE_CHECKING:
    from chiffon.executor.replay.batch import RunResult, Totals
    from chiffon.executor.replay.normalize import Divergence, Step
    from chiffon.executor.replay.source import RunRef

# The engine (LangGraph, the node runners: about 2 s of CPU to import) is imported only
# once there is a run to replay: an unknown run or an unreachable store is said at once.

OK, DIVERGED, USAGE, NOT_FOUND, UNAVAILABLE = 0, 1, 2, 4, 6


def _error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


def verify_command(
    run_id: str | None,
    workflow: str | None,
    last: int,
    workers: int | None,
    as_json: bool,
    *,
    through_langgraph: bool = False,
) -> int:
    """Verify one run or a workflow's last runs (the command line is checked already)."""
    settings = ChiffonSettings()
    # The engine's own log lines stay out of the verdict (warnings and up, on stderr).
    configure_logging(service="chiffon-replay", level="warning", fmt=settings.log_format)
    try:
        if not asyncio.run(_reachable(settings)):
            raise EventStoreUnavailable("nothing answers there")
        if run_id is not None:
            return asyncio.run(_one(settings, run_id, as_json, through_langgraph))
        assert workflow is not None
        return _many(settings, workflow, last, workers, as_json, through_langgraph)
    except EventStoreUnavailable as error:
        _error(f"the event store cannot be reached ({settings.nats_url}): {error}")
        return UNAVAILABLE


async def _reachable(settings: ChiffonSettings, timeout: float = 2.0) -> bool:
    """Whether any NATS server of the settings accepts a connection. The store's client
    retries a refused connection for ever (a service must outlive a NATS restart); a
    command must say at once that nothing is there."""
    for server in settings.nats_servers:
        url = urlsplit(server)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(url.hostname or "127.0.0.1", url.port or 4222), timeout
            )
        except (OSError, TimeoutError):
            continue
        writer.close()
        return True
    return False


async def _one(
    settings: ChiffonSettings, run_id: str, as_json: bool, through_langgraph: bool
) -> int:
    async with JetStreamEventStore.connect(
        settings.nats_url, CATALOG, namespace=settings.namespace, name="chiffon-replay"
    ) as store:
        if not await store.aggregate_version(AggregateKey("run", run_id)):
            _error(f"no run {run_id}")
            return NOT_FOUND
        from chiffon.executor.replay.batch import verify_runs

        results = [
            r async for r in verify_runs(store, [run_id], through_langgraph=through_langgraph)
        ]
    result = results[0]
    if as_json:
        typer.echo(json.dumps(result_json(result), indent=2))
    elif result.verdict is None:
        _error(f"cannot replay run {run_id}: {result.error}")
    elif result.verdict.same:
        v = result.verdict
        typer.echo(
            f"run {run_id} ({v.workflow} v{v.version}): {v.nodes} node executions, every decision the same"
        )
        if v.note:
            typer.echo(f"  the record stops there: {v.note}")
    else:
        typer.echo(describe(result))
    return OK if result.verdict is not None and result.verdict.same else DIVERGED


def _many(
    settings: ChiffonSettings,
    workflow: str,
    last: int,
    processes: int | None,
    as_json: bool,
    through_langgraph: bool,
) -> int:
    async def ids() -> list[RunRef]:
        async with JetStreamEventStore.connect(
            settings.nats_url, CATALOG, namespace=settings.namespace, name="chiffon-replay"
        ) as store:
            from chiffon.executor.replay.source import last_runs

            return await last_runs(store, workflow, last)

    runs = asyncio.run(ids())
    if not runs:
        _error(f"no runs of workflow {workflow!r}")
        return NOT_FOUND
    started = time.perf_counter()
    from chiffon.executor.replay.batch import default_processes, verify_in_processes

    totals = verify_in_processes(
        settings.nats_url,
        settings.namespace,
        runs,
        processes or default_processes(len(runs)),
        through_langgraph=through_langgraph,
    )
    seconds = time.perf_counter() - started
    summary = _summary(workflow, totals, seconds)
    if as_json:
        summary["divergent"] = [
            result_json(r) for r in totals.results if r.verdict is None or not r.verdict.same
        ]
        typer.echo(json.dumps(summary, indent=2))
    else:
        for result in totals.results:
            if result.verdict is None or not result.verdict.same:
                typer.echo(describe(result, short=True))
        typer.echo(
            f"{_count(summary['runs'], 'run')} of {workflow}: {summary['same']} the same,"
            f" {summary['diverged']} diverged, {summary['unreadable']} could not be replayed;"
            f" {_count(summary['nodes'], 'node execution')} in {seconds:.2f}s"
            f" ({summary['nodes_per_second']:,.0f} nodes/s), no provider or agent called"
        )
    return OK if summary["same"] == summary["runs"] else DIVERGED


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _summary(workflow: str, totals: Totals, seconds: float) -> dict[str, Any]:
    verdicts = [r.verdict for r in totals.results if r.verdict is not None]
    return {
        "workflow": workflow,
        "runs": len(totals.results),
        "same": sum(1 for v in verdicts if v.same),
        "diverged": sum(1 for v in verdicts if not v.same),
        "unreadable": len(totals.results) - len(verdicts),
        "nodes": totals.nodes,
        "seconds": round(seconds, 3),
        "nodes_per_second": round(totals.nodes / seconds, 1) if seconds else 0.0,
    }


def describe(result: RunResult, *, short: bool = False) -> str:
    """A run that did not verify, for people: the first divergent event, both ways."""
    if result.verdict is None:
        return f"run {result.run_id}: cannot replay: {result.error}"
    v = result.verdict
    assert v.divergence is not None
    head = f"run {result.run_id} ({v.workflow} v{v.version}) diverged"
    if short:
        return f"{head}: {v.divergence.describe().replace(chr(10), '; ')}"
    lines = [
        f"{head} at its first divergent event:",
        *("  " + line for line in v.divergence.describe().splitlines()),
    ]
    if v.note:
        lines.append(f"  the replay stopped: {v.note}")
    return "\n".join(lines)


def _step_json(step: Step | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {
        "type": step.type,
        "node_id": step.lane or None,
        "detail": json.loads(step.detail) if step.detail.startswith("{") else step.detail,
        "sequence": step.sequence,
    }


def _divergence_json(divergence: Divergence | None) -> dict[str, Any] | None:
    if divergence is None:
        return None
    return {
        "recorded": _step_json(divergence.recorded),
        "replayed": _step_json(divergence.replayed),
    }


def result_json(result: RunResult) -> dict[str, Any]:
    v = result.verdict
    if v is None:
        return {"run_id": result.run_id, "same": False, "error": result.error}
    return {
        "run_id": v.run_id,
        "workflow": v.workflow,
        "version": v.version,
        "same": v.same,
        "nodes": v.nodes,
        "divergence": _divergence_json(v.divergence),
        "note": v.note,
    }
