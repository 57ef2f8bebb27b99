"""Where the CLI finds its settings file: the dev stack's ``.chiffon/config.toml``.

``chiffon up`` writes it (the gateway's address and the admin key's file); any command
run in that folder or below finds it, or ``CHIFFON_CONFIG_FILE`` names another.
"""

from __future__ import annotations

import os
from pathlib import Path


def find_config_file(start: Path | None = None) -> Path | None:
    """``CHIFFON_CONFIG_FILE``, else ``.chiffon/config.toml`` in this folder or a parent."""
    named = os.environ.get("CHIFFON_CONFIG_FILE")
    if named:
        return Path(named)
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / ".chiffon" / "config.toml"
        if path.is_file():
            return path
    return None
