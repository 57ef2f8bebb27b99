"""SecretBox: trigger secrets encrypted with the configured Fernet key, and a clear
refusal when no key is configured."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from chiffon.devstack.keys import ensure_trigger_secrets_key
from chiffon.trigger.secrets import SecretBox, SecretsUnavailable, SecretUnreadable
from chiffon.trigger.settings import TriggerSettings


def settings(**values: object) -> TriggerSettings:
    return TriggerSettings(**values)  # type: ignore[arg-type]


def test_round_trip_with_the_key_from_settings() -> None:
    box = SecretBox.from_settings(settings(trigger_secrets_key=SecretBox.generate_key()))
    token = box.encrypt("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in token
    assert box.decrypt(token) == "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_key_file_made_by_the_dev_stack_is_private_and_kept(tmp_path: Path) -> None:
    path = ensure_trigger_secrets_key(tmp_path / "keys")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_trigger_secrets_key(tmp_path / "keys").read_text() == path.read_text()
    box = SecretBox.from_settings(settings(trigger_secrets_key_file=path))
    again = SecretBox.from_settings(settings(trigger_secrets_key_file=path))
    assert again.decrypt(box.encrypt("a-secret-of-some-length")) == "a-secret-of-some-length"


def test_no_key_says_which_setting_to_set() -> None:
    with pytest.raises(SecretsUnavailable, match="CHIFFON_TRIGGER_SECRETS_KEY"):
        SecretBox.from_settings(settings())


def test_a_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SecretsUnavailable, match="nope.key"):
        SecretBox.from_settings(settings(trigger_secrets_key_file=tmp_path / "nope.key"))


def test_a_key_that_is_not_a_fernet_key_is_refused() -> None:
    with pytest.raises(SecretsUnavailable, match="not a Fernet key"):
        SecretBox.from_settings(settings(trigger_secrets_key="too-short"))


def test_a_token_from_another_key_is_unreadable() -> None:
    token = SecretBox(SecretBox.generate_key()).encrypt("sixteen-chars-at-least")
    with pytest.raises(SecretUnreadable):
        SecretBox(SecretBox.generate_key()).decrypt(token)
