"""CHIFFON_NATS_URL with the nodes of a cluster: several URLs, comma-separated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chiffon.core.settings import ChiffonSettings, nats_servers


def test_several_urls_are_the_servers_the_client_connects_to() -> None:
    settings = ChiffonSettings(nats_url=" nats://127.0.0.1:4222, nats://127.0.0.1:4223,,")
    assert settings.nats_servers == ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
    # Kept normalised, so every process and log line shows the same list.
    assert settings.nats_url == "nats://127.0.0.1:4222,nats://127.0.0.1:4223"


def test_one_url_stays_one_server() -> None:
    assert ChiffonSettings(nats_url="tls://nats.example:4222").nats_servers == [
        "tls://nats.example:4222"
    ]
    assert nats_servers("nats://a:1") == ["nats://a:1"]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("nats://a:1,http://b:2", "'http://b:2'"),
        ("nats://a:1,b:4222", "'b:4222'"),
        (" , ", "comma-separated"),
    ],
)
def test_a_bad_url_in_the_list_is_named(value: str, named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ChiffonSettings(nats_url=value)
    [problem] = caught.value.errors()
    assert named in problem["msg"]


def test_a_password_in_a_bad_url_is_not_in_the_message() -> None:
    with pytest.raises(ValidationError) as caught:
        ChiffonSettings(nats_url="nats://a:1,http://user:hunter2@b:2")
    # The message is what `chiffon up` and the services print (devstack's describe()).
    [problem] = caught.value.errors()
    assert "http://user:***@b:2" in problem["msg"] and "hunter2" not in problem["msg"]
