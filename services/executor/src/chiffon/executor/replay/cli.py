"""``chiffon replay``, added to the CLI through the ``chiffon.cli`` entry point."""

from __future__ import annotations

import typer

# The CLI loads this module on every invocation: everything but typer is imported
# inside the command (the executor's engine takes about a second to import).
RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
MAX_LAST = 100_000
USAGE = 2  # the CLI's exit code for a usage error (chiffon.cli.exit_codes)


def register(app: typer.Typer) -> None:
    """Add ``replay`` to ``app`` (imports stay inside the command: the CLI loads this
    module on every invocation)."""

    @app.command()
    def replay(
        run_id: str | None = typer.Argument(None, help="The run to re-drive."),
        verify: bool = typer.Option(
            False,
            "--verify",
            help="Re-drive the run with its own workflow version against its recorded model"
            " and agent answers (calling neither) and compare every decision.",
        ),
        workflow: str | None = typer.Option(
            None, "--workflow", help="Verify the last runs of this workflow instead of one run."
        ),
        last: int = typer.Option(
            100, "--last", min=1, max=MAX_LAST, help="How many of its runs (newest)."
        ),
        workers: int | None = typer.Option(
            None,
            "--workers",
            min=1,
            max=64,
            help="Processes that replay runs (default: one per core, up to 8).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        through_langgraph: bool = typer.Option(
            False,
            "--through-langgraph",
            help="Step the graph with LangGraph's own loop (about half as fast): to check"
            " a new LangGraph release against your history before upgrading.",
        ),
    ) -> None:
        """Re-drive recorded runs with the engine and check every decision is the same.

        Exit 0 when every decision is the same; 1 when a run diverged (the first divergent
        event is printed: recorded vs replayed) or could not be replayed; 2 usage; 4 no
        such run; 6 the event store cannot be reached."""
        refused = usage_error(run_id, verify, workflow)
        if refused is not None:
            typer.secho(f"error: {refused}", fg=typer.colors.RED, err=True)
            raise typer.Exit(USAGE)
        from chiffon.executor.replay.command import verify_command

        raise typer.Exit(
            verify_command(
                run_id, workflow, last, workers, as_json, through_langgraph=through_langgraph
            )
        )


def usage_error(run_id: str | None, verify: bool, workflow: str | None) -> str | None:
    """What is wrong with the command line, before anything is imported or connected."""
    import re

    from chiffon.events.limits import WORKFLOW_NAME_PATTERN

    if not verify:
        return "say what to do with the run: --verify (the only mode)"
    if (run_id is None) == (workflow is None):
        return "name one run (RUN_ID) or a workflow (--workflow NAME), not both"
    if run_id is not None and not re.match(RUN_ID_PATTERN, run_id):
        return f"{run_id[:80]!r} is not a run id"
    if workflow is not None and not re.match(WORKFLOW_NAME_PATTERN, workflow):
        return f"{workflow[:80]!r} is not a workflow name"
    return None
