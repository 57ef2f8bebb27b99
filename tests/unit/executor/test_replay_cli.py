"""``chiffon replay``'s command line: what it refuses before reading anything, with the
CLI's usage exit code (2) and a message, never a traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from chiffon.executor.replay.cli import register


def replay_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """The CLI's root (``replay`` is one of its commands)."""

    register(app)
    return app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "run-1"], "--verify (the only mode)"),
        (["replay", "--verify"], "name one run (RUN_ID) or a workflow"),
        (["replay", "run-1", "--verify", "--workflow", "brief"], "not both"),
        (["replay", "run.>", "--verify"], "'run.>' is not a run id"),
        (["replay", "a" * 500, "--verify"], "is not a run id"),
        (["replay", "--verify", "--workflow", "Brief; DROP TABLE runs"], "is not a workflow name"),
    ],
)
def test_a_bad_command_line_is_refused_with_the_usage_code(args: list[str], message: str) -> None:
    result = CliRunner().invoke(replay_app(), args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_huge_range_is_refused_by_its_bound() -> None:
    result = CliRunner().invoke(
        replay_app(), ["replay", "--verify", "--workflow", "brief", "--last", "10000000"]
    )
    assert result.exit_code == 2
    assert "--last" in result.output
