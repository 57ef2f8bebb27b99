"""``chiffon deploy agent``: what an operator needs to run an agent on another machine."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
