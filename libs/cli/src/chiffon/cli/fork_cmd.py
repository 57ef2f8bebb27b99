"""``chiffon fork``: a what-if run from a recorded one, through the gateway (operator key).

The new run reuses the recorded outputs of every node the run completed before ``--at``
first started (no model is called for them) and executes from ``--at`` on, with that
node's model or prompt changed, or other inputs. See docs/fork.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.http_client import gateway_client
from chiffon.cli.runs_cmd import parse_inputs
from chiffon.events.limits import SPEC_STRING_MAX_BYTES


def read_prompt(path: Path) -> str:
    """The prompt in ``path`` (UTF-8 text, as a workflow's strings are), or a usage error
    that says what is wrong with the file."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise codes.fail(
            f"--prompt-file {str(path)!r}: cannot read it ({error.strerror or error})", codes.USAGE
        ) from None
    if len(data) > SPEC_STRING_MAX_BYTES:
        raise codes.fail(
            f"--prompt-file {str(path)!r}: {len(data)} bytes; a prompt is at most "
            f"{SPEC_STRING_MAX_BYTES} bytes",
            codes.USAGE,
        )
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise codes.fail(
            f"--prompt-file {str(path)!r}: not UTF-8 text (byte {error.start})", codes.USAGE
        ) from None
    if "\x00" in text:
        raise codes.fail(f"--prompt-file {str(path)!r}: contains a NUL character", codes.USAGE)
    if not text.strip():
        raise codes.fail(f"--prompt-file {str(path)!r}: the file is empty", codes.USAGE)
    return text


def fork(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run to fork."),
    at: str = typer.Option(..., "--at", help="The node to execute from (it started in the run)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="The model of node --at (an llm node) in the fork."
    ),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="A file holding node --at's prompt in the fork."
    ),
    inputs: list[str] = typer.Option(
        [], "--input", "-i", help="A run input to change: KEY=VALUE (repeat), or KEY:=JSON."
    ),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Same key, same request: the same fork."
    ),
    as_json: bool = typer.Option(False, "--json", help='Print {"run_id": ...}.'),
) -> None:
    """Fork a run at a node: reuse what ran before it, run it and what follows with a
    change. Prints the new run's id."""
    body: dict[str, Any] = {"at": at, "inputs": parse_inputs(inputs)}
    if model is not None:
        body["model"] = model
    if prompt_file is not None:
        body["prompt"] = read_prompt(prompt_file)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}

    async def main() -> dict[str, Any]:
        client = gateway_client(required=True)
        assert client is not None
        async with client:
            path = f"/v1/runs/{quote(run_id, safe='')}/fork"
            result: dict[str, Any] = await client._json(  # noqa: SLF001 — one generic call
                "POST", path, json=body, headers=headers
            )
            return result

    forked = codes.run_async(main)
    if as_json:
        typer.echo(json.dumps({"run_id": forked["run_id"]}))
        return
    typer.echo(forked["run_id"])
    typer.echo(f"  follow it: chiffon runs follow {forked['run_id']}", err=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("fork")(fork)
