"""Agent credentials: ``chfa_<credential id>_<secret>``, shown once, stored as sha256.

The same scheme as the gateway's API keys (an idea copied, not an import: services never
import each other). The secret carries 256 bits, so a plain sha256 cannot be reversed
by guessing and no pepper is needed. A presented token is looked up by the credential
id it names (one aggregate read), then its hash compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid

TOKEN_PREFIX = "chfa_"  # noqa: S105 — a prefix, not a secret
_TOKEN = re.compile(r"^chfa_([0-9a-f]{32})_([A-Za-z0-9_-]{16,128})$")


def new_credential() -> tuple[str, str]:
    """A fresh (credential id, token)."""
    credential_id = uuid.uuid4().hex
    return credential_id, f"{TOKEN_PREFIX}{credential_id}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def display_prefix(token: str) -> str:
    """What lists show of a token: enough to tell two apart, nothing to use."""
    return token[:13]


def credential_id_of(token: str) -> str | None:
    """The credential id a well-formed token names, or None."""
    found = _TOKEN.match(token)
    return found.group(1) if found else None
