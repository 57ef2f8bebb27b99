"""The registry's settings (``CHIFFON_*`` environment variables or the config file)."""

from __future__ import annotations

from pydantic import Field

from chiffon.core.settings import ChiffonSettings


class RegistrySettings(ChiffonSettings):
    # An agent is offline once its last heartbeat is older than its TTL plus this grace.
    heartbeat_grace_seconds: float = Field(default=5.0, ge=0.0, le=300.0)
