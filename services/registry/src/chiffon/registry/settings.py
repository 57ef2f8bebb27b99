"""The registry's settings (``CHIFFON_*`` environment variables or the config file)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from chiffon.core.settings import ChiffonSettings


class RegistrySettings(ChiffonSettings):
    # An agent is offline once its last heartbeat is older than its TTL plus this grace.
    heartbeat_grace_seconds: float = Field(default=5.0, ge=0.0, le=300.0)
    # The dev stack's local agent: a credential the registry accepts without an issued
    # one (as the gateway accepts its bootstrap admin key), for the agent of this name.
    # Never set it in production: issue credentials with `chiffon agents credential create`.
    bootstrap_agent_credential: SecretStr | None = None
    bootstrap_agent_name: str = Field(default="local", min_length=1, max_length=63)
