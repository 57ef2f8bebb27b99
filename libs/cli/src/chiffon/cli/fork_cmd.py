"""``chiffon fork``: a what-if run from a recorded one."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
