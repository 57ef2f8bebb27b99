"""The dev stack's agent keys, under ``<home>/keys`` (mode 0700), made once and kept.

- ``executor-signing.pem`` (0600): the executors sign task tokens with it
  (``CHIFFON_AGENT_SIGNING_KEY_FILE``);
- ``executor-signing.pub``: agents accept only tokens it verifies
  (``CHIFFON_EXECUTOR_PUBLIC_KEY_FILE``);
- ``agent-credential`` (0600): the local agent's registry credential, which the registry
  accepts as its bootstrap agent credential (``CHIFFON_BOOTSTRAP_AGENT_CREDENTIAL``), the
  way the gateway accepts the bootstrap admin key.

The key pair is made with `cryptography` directly (the format chiffon.agentproto.auth
reads: Ed25519, PKCS8 and SubjectPublicKeyInfo PEM), so the dev stack needs no agent lib.

- ``trigger-secrets.key`` (0600): the Fernet key the trigger service encrypts webhook
  secrets with (``CHIFFON_TRIGGER_SECRETS_KEY_FILE``); never replaced, or every stored
  trigger secret would become unreadable.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chiffon.devstack.state import write_private


@dataclass(frozen=True)
class AgentKeys:
    signing_key: Path
    public_key: Path
    agent_credential: Path

    def credential(self) -> str:
        return self.agent_credential.read_text().strip()


def ensure_agent_keys(folder: Path) -> AgentKeys:
    """The keys under ``folder``, made now if missing (an existing pair is never replaced:
    agents started elsewhere with its public key keep working across down/up)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    keys = AgentKeys(
        folder / "executor-signing.pem",
        folder / "executor-signing.pub",
        folder / "agent-credential",
    )
    if not keys.signing_key.is_file():
        private = Ed25519PrivateKey.generate()
        private_pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(keys.signing_key, private_pem.decode())
        keys.public_key.unlink(missing_ok=True)
    if not keys.public_key.is_file():
        private_key = serialization.load_pem_private_key(
            keys.signing_key.read_bytes(), password=None
        )
        public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_private(keys.public_key, public_pem.decode(), mode=0o644)
    if not keys.agent_credential.is_file() or not keys.credential():
        token = f"chfa_bootstrap_{secrets.token_urlsafe(32)}"
        write_private(keys.agent_credential, token + "\n")
    return keys


def ensure_trigger_secrets_key(folder: Path) -> Path:
    """The trigger service's Fernet key file under ``folder``, made now if missing (an
    existing key is never replaced: triggers stored with it stay readable)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / "trigger-secrets.key"
    if not path.is_file() or not path.read_text().strip():
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()  # a Fernet key
        write_private(path, key + "\n")
    return path
