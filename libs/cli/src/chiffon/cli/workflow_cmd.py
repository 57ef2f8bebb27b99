"""``chiffon validate FILE`` and ``chiffon workflows register / list / show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.connect import open_client
from chiffon.cli.text import echo, secho

# The workflow model (0.4 s of CPU to import) and the read models (0.3 s) are imported
# where they are used: `chiffon runs ...` imports this module for ``read_spec``.
if TYPE_CHECKING:
    from chiffon.readmodels.views import WorkflowPublic, WorkflowSummary
    from chiffon.workflow import SpecError, WorkflowSpec

app = typer.Typer(
    help="Workflow definitions: register immutable versions, list, show.", no_args_is_help=True
)


def read_spec(path: Path) -> tuple[WorkflowSpec, str, str]:
    """(spec, source text, format) of a workflow file, or exit 2 with every issue."""
    from chiffon.workflow import SpecError, load_spec

    try:
        data = path.read_bytes()
    except OSError as error:
        raise codes.fail(f"cannot read {path}: {error.strerror or error}", codes.USAGE) from None
    try:
        spec = load_spec(data, filename=str(path))
    except SpecError as error:
        print_issues(error)
        raise typer.Exit(codes.USAGE) from None
    source_format = "json" if path.suffix.lower() == ".json" else "yaml"
    return spec, data.decode("utf-8"), source_format


def print_issues(error: SpecError) -> None:
    count = len(error.issues)
    secho(
        f"{error.filename}: {count} error{'s' if count != 1 else ''}", fg=typer.colors.RED, err=True
    )
    for issue in error.issues:
        where = f"{error.filename}:{issue.line}" if issue.line else error.filename
        echo(f"  {where}: {issue.path + ': ' if issue.path else ''}{issue.message}", err=True)


def validate(
    files: list[Path] = typer.Argument(..., help="Workflow files (YAML or JSON).", exists=False),
) -> None:  # noqa: B008
    """Check workflow files; print every error with its path and line (exit 2 if any)."""
    failed = False
    for path in files:
        try:
            spec, _source, _fmt = read_spec(path)
        except typer.Exit:
            failed = True
            continue
        echo(
            f"{path}: ok — {spec.name} v{spec.version}, {len(spec.nodes)} nodes, "
            f"{len(spec.edges)} edges, digest {spec.digest()[:12]}"
        )
    if failed:
        raise typer.Exit(codes.USAGE)


@app.command()
def register(file: Path = typer.Argument(..., help="Workflow file (YAML or JSON).")) -> None:  # noqa: B008
    """Register a workflow version (idempotent for the same content)."""
    spec, source, source_format = read_spec(file)

    async def main() -> dict[str, object]:
        async with await open_client() as client:
            return await client.register_workflow(source, source_format=source_format)

    result = codes.run_async(main)
    state = "registered" if result.get("created") else "already registered (same content)"
    echo(f"{state}: {result['name']} v{result['version']} (digest {str(result['digest'])[:12]})")


@app.command("list")
def list_workflows(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every registered workflow with its latest version."""

    async def main() -> list[WorkflowSummary]:
        async with await open_client() as client:
            return list(await client.list_workflows())

    found = codes.run_async(main)
    if as_json:
        echo(json.dumps([w.model_dump(mode="json") for w in found], indent=2))
        return
    if not found:
        echo("no workflows registered (chiffon workflows register FILE)")
        return
    echo(f"{'NAME':<28} {'LATEST':>6} {'VERSIONS':>8} {'NODES':>5}  REGISTERED")
    for w in found:
        echo(
            f"{w.name:<28} {'v' + str(w.version):>6} {w.versions:>8} {w.node_count:>5}  "
            f"{w.registered_at:%Y-%m-%d %H:%M}"
        )


@app.command()
def show(
    name: str = typer.Argument(..., help="Workflow name."),
    version: int | None = typer.Option(
        None, "--version", "-v", help="A version (default: the latest)."
    ),
    source: bool = typer.Option(False, "--source", help="Print the YAML as registered."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One workflow version: nodes, inputs, versions (and its source with --source)."""

    async def main() -> WorkflowPublic | None:
        async with await open_client() as client:
            return await client.get_workflow(name, version)

    found = codes.run_async(main)
    if found is None:
        which = f"{name!r} version {version}" if version else repr(name)
        raise codes.fail(f"no workflow {which}", codes.NOT_FOUND)
    if as_json:
        echo(found.model_dump_json(indent=2))
        return
    if source:
        echo(found.source, nl=False)
        return
    w = found
    echo(
        f"{w.name} v{w.version}  digest {w.digest[:12]}  registered {w.registered_at:%Y-%m-%d %H:%M} by {w.registered_by}"
    )
    if w.description:
        echo(f"  {w.description}")
    echo(f"  versions: {', '.join(str(v) for v in w.versions)}")
    inputs = w.inputs or {}
    echo("  inputs: " + (", ".join(f"{k} ({v.get('type')})" for k, v in inputs.items()) or "none"))
    for node in w.spec.get("nodes", []):
        echo(f"  - {node.get('id')} ({node.get('type')})")
