"""Task tokens: the executor signs, agents verify (Ed25519).

An agent's gRPC server accepts only the executor. We chose a signed token in metadata over
mutual TLS: an agent then needs one public key (no CA, no per-agent certificate to issue
and rotate), the token names the agent (`aud`) and the task, so a token captured for one
task on one agent is useless for another, and it expires within a minute.

Token = base64url(json {"aud", "task", "exp", "iat"}) + "." + base64url(signature of the
first part), sent as gRPC metadata `authorization: Bearer <token>`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "MAX_TOKEN_LENGTH",
    "TaskSigner",
    "TaskTokenRefused",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "sign_task_token",
    "verify_task_token",
    "verify_task_token_with_key",
]

#: A token is a few hundred bytes; anything far longer is refused before decoding.
MAX_TOKEN_LENGTH = 4096
#: Clock skew tolerated between the executor's host and the agent's (on `iat`).
CLOCK_SKEW_SECONDS = 30.0


class TaskTokenRefused(Exception):
    """The token does not allow this call; `reason` says why (safe to show the caller)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: (private key PEM, PKCS8; public key PEM, SubjectPublicKeyInfo)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(private_pem: bytes) -> Ed25519PrivateKey:
    """The Ed25519 private key in `private_pem`; ValueError if it is not one."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key is not an Ed25519 private key")
    return key


def load_public_key(public_pem: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key in `public_pem`; ValueError if it is not one."""
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the executor key is not an Ed25519 public key")
    return key


class TaskSigner:
    """Signs task tokens with a key loaded once (an executor holds one for its life).

    Parsing the PEM costs about as much as signing; `sign_task_token` does both per call.
    ValueError at construction if `private_pem` is not an Ed25519 private key.
    """

    def __init__(self, private_pem: bytes) -> None:
        self._key = load_private_key(private_pem)

    def sign(
        self,
        *,
        agent_id: str,
        task_id: str,
        ttl: float = 60.0,
        now: float | None = None,
    ) -> str:
        """A token allowing the holder to Execute or Cancel `task_id` on `agent_id` for `ttl` s."""
        issued = time.time() if now is None else now
        claims = {"aud": agent_id, "task": task_id, "exp": issued + ttl, "iat": issued}
        payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signature = self._key.sign(payload.encode("ascii"))
        return f"{payload}.{_b64encode(signature)}"


def sign_task_token(
    private_pem: bytes,
    *,
    agent_id: str,
    task_id: str,
    ttl: float = 60.0,
    now: float | None = None,
) -> str:
    """A token allowing the holder to Execute or Cancel `task_id` on `agent_id` for `ttl` s.

    Loads the key on every call: for many tokens, hold a `TaskSigner`."""
    return TaskSigner(private_pem).sign(agent_id=agent_id, task_id=task_id, ttl=ttl, now=now)


def verify_task_token(
    public_pem: bytes,
    token: str,
    *,
    agent_id: str,
    task_id: str,
    now: float | None = None,
) -> None:
    """Return if `token` was signed by the executor for this agent and task and is current.

    Raises TaskTokenRefused otherwise. The signature is checked before any claim is read.
    """
    verify_task_token_with_key(
        load_public_key(public_pem), token, agent_id=agent_id, task_id=task_id, now=now
    )


def verify_task_token_with_key(
    public_key: Ed25519PublicKey,
    token: str,
    *,
    agent_id: str,
    task_id: str,
    now: float | None = None,
) -> None:
    """verify_task_token with the key already loaded (agents load it once at start)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TaskTokenRefused("token too long")
    payload, sep, signature_text = token.partition(".")
    if not sep or not payload or not signature_text:
        raise TaskTokenRefused("malformed token")
    try:
        signature = _b64decode(signature_text)
        raw = _b64decode(payload)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise TaskTokenRefused("malformed token") from None
    try:
        public_key.verify(signature, payload.encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError):
        raise TaskTokenRefused("bad signature") from None
    try:
        claims = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise TaskTokenRefused("malformed token") from None
    if not isinstance(claims, dict):
        raise TaskTokenRefused("malformed token")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)):
        raise TaskTokenRefused("malformed token")
    current = time.time() if now is None else now
    if current >= exp:
        raise TaskTokenRefused("token expired")
    if iat > current + CLOCK_SKEW_SECONDS:
        raise TaskTokenRefused("token issued in the future")
    if claims.get("aud") != agent_id:
        raise TaskTokenRefused("token is for another agent")
    if claims.get("task") != task_id:
        raise TaskTokenRefused("token is for another task")
