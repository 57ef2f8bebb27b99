"""Settings from environment variables (``CHIFFON_*``) and an optional TOML file.

The file is named by ``CHIFFON_CONFIG_FILE``; environment variables win over it.
Every service prints its effective settings at start with secrets masked.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_URL_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]+)(?P<tail>@)"
)


_PRICE_OVERRIDE_KEYS = frozenset(
    {
        f"{price}_per_{unit}"
        for price in ("input", "output", "cache_read", "cache_write", "reasoning")
        for unit in ("token", "million")
    }
    | {"max_output_tokens"}
)


NATS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")


def nats_servers(urls: str) -> list[str]:
    """The URLs of a comma-separated ``CHIFFON_NATS_URL``, blanks and spaces dropped."""
    return [url.strip() for url in urls.split(",") if url.strip()]


def mask_url(url: str) -> str:
    """Hide the password part of a URL such as ``postgresql://user:secret@host/db``."""
    return _URL_PASSWORD.sub(r"\g<head>***\g<tail>", url)


class ChiffonSettings(BaseSettings):
    """Settings every Chiffon process understands. Services subclass to add their own."""

    model_config = SettingsConfigDict(env_prefix="CHIFFON_", extra="ignore", frozen=True)

    # One URL, or several comma-separated (the nodes of a NATS cluster): the client
    # connects to any of them and reconnects to another when its node dies.
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: SecretStr = SecretStr("postgresql+asyncpg://postgres@127.0.0.1:15432/chiffon")
    # Prefix of every JetStream stream and subject, so several Chiffon installations
    # (or test cases) can share one NATS server without seeing each other's events.
    namespace: str = Field(default="chiffon", pattern=r"^[a-z][a-z0-9]{0,30}$")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    environment: Literal["development", "production"] = "development"
    # Stream replicas: 1 on one machine, 3 on a cluster (deploy/). Read where streams
    # and work consumers are created; an existing stream is updated to it.
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # How long JetStream remembers a Nats-Msg-Id for de-duplication.
    duplicate_window_seconds: float = Field(default=120.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    replica: int = Field(default=0, ge=0)
    # Per-model prices that win over LiteLLM's price map (self-hosted or negotiated prices),
    # JSON: {"openai/gpt-4o-mini": {"input_per_token": "0.00000015", "output_per_token":
    # "0.0000006"}}; also cache_read_*, cache_write_*, reasoning_* and *_per_million.
    price_overrides: dict[str, dict[str, str | float | int]] = Field(default_factory=dict)

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        servers = nats_servers(value)
        if not servers:
            raise ValueError("must be a nats:// (or tls://) URL, or several comma-separated")
        for url in servers:
            if not url.startswith(NATS_SCHEMES):
                raise ValueError(f"{mask_url(url)!r} must be a nats:// (or tls://) URL")
        return ",".join(servers)

    @property
    def nats_servers(self) -> list[str]:
        """``nats_url`` as the list nats-py connects to."""
        return nats_servers(self.nats_url)

    @field_validator("price_overrides")
    @classmethod
    def _price_overrides(
        cls, value: dict[str, dict[str, str | float | int]]
    ) -> dict[str, dict[str, str | float | int]]:
        for model, fields in value.items():
            if not model or not fields:
                raise ValueError(f"{model!r}: a model name and at least one price")
            for key, amount in fields.items():
                if key not in _PRICE_OVERRIDE_KEYS:
                    allowed = ", ".join(sorted(_PRICE_OVERRIDE_KEYS))
                    raise ValueError(f"{model}: unknown field {key!r} (allowed: {allowed})")
                if key == "max_output_tokens":
                    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                        raise ValueError(f"{model}: max_output_tokens must be a positive integer")
                    continue
                try:
                    number = Decimal(str(amount))
                except InvalidOperation:
                    number = Decimal("NaN")
                if isinstance(amount, bool) or not number.is_finite() or number < 0:
                    raise ValueError(
                        f"{model}: {key} must be a non-negative decimal, got {amount!r}"
                    )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("CHIFFON_CONFIG_FILE")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise ValueError(f"CHIFFON_CONFIG_FILE={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def database_dsn(self) -> str:
        return self.database_url.get_secret_value()

    def masked(self) -> dict[str, Any]:
        """The effective settings with every secret hidden, fit for a log line."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = mask_url(secret) if "://" in secret else ("***" if secret else "")
            elif isinstance(value, str):
                value = mask_url(value)
            shown[name] = value
        return shown
