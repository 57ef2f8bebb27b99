"""Events of API keys (the gateway's own aggregate, ``apikey``; stream KEYS).

The aggregate id is the key's id. A key's secret is never in an event: only its
hash (``sha256`` of the token, which holds 256 random bits) and a short prefix that
lets a person recognise it in a list.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import AwareDatetime, Field

from chiffon.events.envelope import EventPayload
from chiffon.events.limits import KEY_NAME_MAX_CHARS, REASON_MAX_CHARS

ApiKeyRole = Literal["viewer", "operator", "admin"]
API_KEY_ROLES: tuple[ApiKeyRole, ...] = get_args(ApiKeyRole)
"""From the least to the most allowed: a role may do everything a lower one may."""


class ApiKeyCreated(EventPayload):
    """A key was issued. Who issued it is the envelope's actor."""

    event_type = "apikey.created"
    aggregate = "apikey"

    name: str = Field(min_length=1, max_length=KEY_NAME_MAX_CHARS)
    role: ApiKeyRole
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the token, hex")
    prefix: str = Field(max_length=16, description="The token's first characters, for display")
    expires_at: AwareDatetime | None = None


class ApiKeyRevoked(EventPayload):
    """A key stops working on every gateway replica. Who revoked it is the actor."""

    event_type = "apikey.revoked"
    aggregate = "apikey"

    reason: str | None = Field(default=None, max_length=REASON_MAX_CHARS)


APIKEY_EVENTS: tuple[type[EventPayload], ...] = (ApiKeyCreated, ApiKeyRevoked)
