"""Which client a CLI command talks through, chosen without importing the others.

The gateway's HTTP client is the usual one; the direct client (NATS, PostgreSQL, the
event store) pulls in far more code, so it is imported only when it is the one used.
A CLI call then starts in about half a second instead of well over one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chiffon.cli.client import ChiffonClient
    from chiffon.core.settings import ChiffonSettings


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


async def open_client(settings: ChiffonSettings | None = None) -> ChiffonClient:
    """The gateway's HTTP client when a gateway is configured (flags,
    CHIFFON_GATEWAY_URL, or the dev stack's config file), else the direct client.
    ``CHIFFON_CLIENT=direct`` forces the direct one (operators debugging internals)."""
    if settings is None and os.environ.get("CHIFFON_CLIENT", "").lower() != "direct":
        from chiffon.cli.http_client import gateway_client

        client = gateway_client()
        if client is not None:
            return client
    from chiffon.cli.direct_client import DirectClient, load_settings

    return DirectClient(settings or load_settings())
