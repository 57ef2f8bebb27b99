"""``chiffon infra``: the playbook catalog from the command line (search, scaffold)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chiffon.cli import exit_codes as codes
from chiffon.cli.text import echo, printable

if TYPE_CHECKING:
    from chiffon.catalog.search import SearchResult

app = typer.Typer(help="Search the playbook catalog and scaffold roles.", no_args_is_help=True)


# -- chiffon infra search ------------------------------------------------------------


def _search_table(result: SearchResult) -> Table:
    """The matches as a table; every stored string as Text, never as markup."""
    table = Table()
    # A name is what the user types next: never cut, folded if the terminal is narrow.
    table.add_column("name", no_wrap=True, overflow="fold")
    table.add_column("confidence", no_wrap=True)
    table.add_column("why", no_wrap=True)
    table.add_column("description")
    for match in result.matches:
        confidence = Text(f"{match.confidence:.2f}")
        if match.uncertain:
            confidence.append(" uncertain", style="yellow")
        table.add_row(
            Text(printable(match.playbook.name), style="bold" if not match.uncertain else ""),
            confidence,
            Text(match.matched_by),
            Text(printable(match.playbook.description)),
        )
    return table


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="What the playbook should do.")],
    catalog: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            envvar="CHIFFON_AGENT_CATALOG_DIR",
            help="The catalog folder (holding playbooks/).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many matches.")] = 5,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Matches under it are marked uncertain.")
    ] = 0.85,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Find the playbook for a request: exact names and tags first, then meaning."""
    if catalog is None:
        raise codes.fail(
            "no catalog: pass --catalog DIR or set CHIFFON_AGENT_CATALOG_DIR", codes.USAGE
        )
    # Imported here: the model (onnxruntime, numpy) costs ~2 s and no other command needs it.
    from chiffon.catalog.catalog import PLAYBOOKS_DIR
    from chiffon.catalog.embedding import ModelUnavailable
    from chiffon.catalog.embedding_cache import default_cache_file
    from chiffon.catalog.search import CatalogSearch, InvalidQuery

    if not (catalog / PLAYBOOKS_DIR).is_dir():
        raise codes.fail(
            f"{catalog} is not a catalog: it has no {PLAYBOOKS_DIR}/ folder", codes.NOT_FOUND
        )
    searcher = CatalogSearch(catalog, cache_file=default_cache_file(catalog))
    try:
        result = searcher.search(query, limit=limit, threshold=threshold)
    except InvalidQuery as error:
        raise codes.fail(str(error), codes.USAGE) from None
    except ModelUnavailable as error:
        raise codes.fail(str(error), 1) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    if not result.matches:
        echo(f"the catalog {catalog} has no playbooks", err=True)
        return
    Console().print(_search_table(result))
    if result.uncertain:
        echo(
            f"no playbook matches with confidence >= {threshold:g}: "
            "check the uncertain ones before running them",
            err=True,
        )


# -- chiffon infra scaffold ----------------------------------------------------------


@app.command("scaffold")
def scaffold(
    service: Annotated[str, typer.Argument(help="The service the role deploys (uptime-kuma).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="The catalog folder to write roles/ and playbooks/ into.", file_okay=False
        ),
    ] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace files that exist.")] = False,
) -> None:
    """Write a role (tasks, handlers, defaults, meta, README) and its playbook, from templates."""
    from chiffon.catalog.scaffold import ScaffoldError, plan_scaffold, write_scaffold

    try:
        planned = plan_scaffold(service)
        written = write_scaffold(planned, out, force=force)
    except ScaffoldError as error:
        raise codes.fail(str(error), codes.USAGE) from None
    typer.echo(f"role {planned.role}, playbook deploy-{planned.name}:")
    for path in written:
        typer.echo(f"  {path}")
