"""The trigger service's settings (``CHIFFON_*`` environment variables or the config file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from chiffon.core.settings import ChiffonSettings


class TriggerSettings(ChiffonSettings):
    # The key trigger secrets are encrypted with (a Fernet key), or a file holding it;
    # the dev stack generates one under .chiffon/. Without either, no trigger can be
    # created (and none is open).
    trigger_secrets_key: SecretStr | None = None
    trigger_secrets_key_file: Path | None = None
    # A delivery's body above this many bytes is refused (413); above the inline size it
    # is stored by reference in the deliveries object store.
    hook_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    hook_inline_body_bytes: int = Field(default=64 * 1024, ge=1024, le=512 * 1024)
    # Standard Webhooks: how far a delivery's timestamp may be from now, in seconds.
    hook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    # Where replies go: Meta's Graph API and Telegram's Bot API (tests point these at a
    # local stand-in server).
    whatsapp_api_base: str = "https://graph.facebook.com/v21.0"
    telegram_api_base: str = "https://api.telegram.org"
    # Schedules: how often the ticker looks for due ticks, in seconds.
    schedule_poll_seconds: float = Field(default=0.25, gt=0, le=60)
