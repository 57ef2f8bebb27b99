"""Trigger secrets at rest: Fernet tokens (AES-128-CBC + HMAC-SHA256, from `cryptography`).

A trigger's verification secrets, WhatsApp verify token and reply token are stored in
its events only as Fernet tokens made with one key: ``CHIFFON_TRIGGER_SECRETS_KEY`` or
the file ``CHIFFON_TRIGGER_SECRETS_KEY_FILE`` names (the dev stack makes one under
``.chiffon/keys``, mode 0600). Without a key no trigger can be created or verified; the
service still starts (schedules need no key) and says why in its log and health.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from chiffon.trigger.settings import TriggerSettings

KEY_SETTING = "CHIFFON_TRIGGER_SECRETS_KEY"
KEY_FILE_SETTING = "CHIFFON_TRIGGER_SECRETS_KEY_FILE"


class SecretsUnavailable(Exception):
    """No usable key: triggers can be neither created nor verified."""


class SecretUnreadable(Exception):
    """A stored token this key cannot decrypt (made with another key, or damaged)."""


class SecretBox:
    """Encrypts and decrypts trigger secrets with one Fernet key."""

    __slots__ = ("_fernet",)

    def __init__(self, key: bytes | str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise SecretsUnavailable(
                "the trigger secrets key is not a Fernet key (32 url-safe base64-encoded "
                "bytes; make one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            ) from None

    @classmethod
    def generate_key(cls) -> str:
        return Fernet.generate_key().decode()

    @classmethod
    def from_settings(cls, settings: TriggerSettings) -> SecretBox:
        """The box for the configured key (the key itself wins over the key file);
        ``SecretsUnavailable`` saying what to set when neither gives a key."""
        if settings.trigger_secrets_key is not None:
            key = settings.trigger_secrets_key.get_secret_value().strip()
            if key:
                return cls(key)
        path = settings.trigger_secrets_key_file
        if path is not None:
            try:
                key = path.read_text().strip()
            except OSError as error:
                raise SecretsUnavailable(
                    f"cannot read the trigger secrets key file {path}: {error.strerror or error}"
                ) from None
            if not key:
                raise SecretsUnavailable(f"the trigger secrets key file {path} is empty")
            return cls(key)
        raise SecretsUnavailable(
            f"no trigger secrets key: set {KEY_SETTING} or {KEY_FILE_SETTING} "
            "(a Fernet key); until then no webhook trigger can be created or verified"
        )

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except (InvalidToken, ValueError):
            raise SecretUnreadable(
                "a stored trigger secret cannot be decrypted with this key"
            ) from None
