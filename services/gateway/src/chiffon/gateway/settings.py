"""The gateway's settings (``CHIFFON_*`` environment variables or the config file)."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from chiffon.core.settings import ChiffonSettings

# Values that must never guard a real installation.
_WELL_KNOWN = {"changeme", "change-me", "admin", "password", "secret", "chiffon", "test", "dev"}
MIN_BOOTSTRAP_KEY = 16
MIN_PRODUCTION_BOOTSTRAP_KEY = 32


class GatewaySettings(ChiffonSettings):
    # The admin key the dev stack hands out (CHIFFON_BOOTSTRAP_ADMIN_KEY). It is never
    # stored; requests bearing it act as the key id "bootstrap".
    bootstrap_admin_key: SecretStr | None = None
    # Request bodies larger than this are refused with 413 (a workflow is at most 1 MiB).
    max_body_bytes: int = Field(default=1_048_576 + 64 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Per-key token bucket: sustained requests per second and burst. 0 turns it off.
    rate_limit_per_second: float = Field(default=100.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    # Failed authentications (API and dashboard login): after this many from one client
    # address within the window, or this many for one key prefix (the `chf_xxxxxx` the
    # key list shows), 429 with Retry-After before the key is even checked; the bucket
    # refills over the window. The prefix's is larger, so that one address alone cannot
    # lock a key out. 0 turns each off.
    auth_failure_burst: int = Field(default=20, ge=0)
    auth_failure_prefix_burst: int = Field(default=100, ge=0)
    auth_failure_window_seconds: float = Field(default=60.0, gt=0, le=86_400)
    # At most this many addresses (and as many prefixes) are remembered.
    auth_failure_max_clients: int = Field(default=100_000, ge=1)
    # Behind a reverse proxy: count by the address it appended to X-Forwarded-For rather
    # than by the socket peer (the proxy). Only when every request comes through it.
    trust_forwarded_for: bool = False
    # How long a command (start, cancel, approve, register) may wait for its owner.
    command_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # How long one read-model query may take before the request gets a 503.
    query_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # A run the event store has but the read model does not show yet: wait this long.
    consistency_wait_seconds: float = Field(default=2.0, ge=0, le=30)
    # SSE: a comment line this often while a run is idle; the client's reconnect delay.
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, le=300)
    sse_retry_ms: int = Field(default=2000, ge=100, le=600_000)
    # An ended run's events stay in memory this long for late or resuming followers.
    sse_linger_seconds: float = Field(default=30.0, ge=0, le=3600)
    # /readyz fails when a read model we serve is behind its stream for longer than this.
    readiness_max_lag_seconds: float = Field(default=30.0, gt=0)
    # The dashboard's session cookie (it holds the API key; HttpOnly, SameSite=Strict).
    cookie_name: str = Field(default="chiffon_session", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # None: Secure in production, not in development (plain http on localhost).
    cookie_secure: bool | None = None
    session_max_age_seconds: int = Field(default=12 * 3600, ge=60)
    # Where senders reach the trigger service (a trigger's hook_url is this and
    # /hooks/<name>): its public address behind a proxy; the dev stack passes its own.
    trigger_public_url: str = Field(
        default="http://127.0.0.1:8403", pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
    )

    @model_validator(mode="after")
    def _refuse_a_prefix_burst_one_address_can_spend(self) -> GatewaySettings:
        burst, prefix_burst = self.auth_failure_burst, self.auth_failure_prefix_burst
        if burst and prefix_burst and prefix_burst <= burst:
            raise ValueError(
                f"CHIFFON_AUTH_FAILURE_PREFIX_BURST ({prefix_burst}) must be larger than "
                f"CHIFFON_AUTH_FAILURE_BURST ({burst}): otherwise one address alone can lock "
                "every key with a given prefix out"
            )
        return self

    @model_validator(mode="after")
    def _refuse_weak_bootstrap_key(self) -> GatewaySettings:
        if self.bootstrap_admin_key is None:
            return self
        key = self.bootstrap_admin_key.get_secret_value()
        if not key:
            return self
        if key.strip().lower() in _WELL_KNOWN or len(key) < MIN_BOOTSTRAP_KEY:
            raise ValueError(
                f"CHIFFON_BOOTSTRAP_ADMIN_KEY is too weak: use at least {MIN_BOOTSTRAP_KEY} random "
                "characters (`chiffon up` generates one)"
            )
        if self.environment == "production" and len(key) < MIN_PRODUCTION_BOOTSTRAP_KEY:
            raise ValueError(
                f"CHIFFON_BOOTSTRAP_ADMIN_KEY must have at least {MIN_PRODUCTION_BOOTSTRAP_KEY} "
                "characters in production"
            )
        return self

    def hook_url(self, hook_path: str) -> str:
        return self.trigger_public_url.rstrip("/") + hook_path

    @property
    def secure_cookies(self) -> bool:
        return (
            self.environment == "production" if self.cookie_secure is None else self.cookie_secure
        )

    def bootstrap_key(self) -> str | None:
        if self.bootstrap_admin_key is None:
            return None
        return self.bootstrap_admin_key.get_secret_value() or None
