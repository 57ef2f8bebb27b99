"""``chiffon profile`` and ``chiffon compare``: where a run's time and money went."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
