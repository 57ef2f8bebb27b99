"""``chiffon audit``: a run's timeline, and failures for post-mortems."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
