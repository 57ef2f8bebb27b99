"""``chiffon replay``, added to the CLI through the ``chiffon.cli`` entry point."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``replay`` to ``app`` (imports stay inside the command: the CLI loads this
    module on every invocation)."""
