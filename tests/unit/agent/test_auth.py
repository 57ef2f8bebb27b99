"""Task tokens: the executor signs one per agent and task; agents refuse every other token."""

from __future__ import annotations

import pytest

from chiffon.agentproto.auth import (
    TaskSigner,
    TaskTokenRefused,
    generate_keypair,
    sign_task_token,
    verify_task_token,
)

NOW = 1_800_000_000.0
PRIVATE, PUBLIC = generate_keypair()


def _token(**overrides: object) -> str:
    kwargs: dict[str, object] = {"agent_id": "agent-1", "task_id": "run:n:0:1", "now": NOW}
    kwargs.update(overrides)
    return sign_task_token(PRIVATE, **kwargs)  # type: ignore[arg-type]


def _refusal(
    token: str,
    *,
    public: bytes = PUBLIC,
    agent_id: str = "agent-1",
    task_id: str = "run:n:0:1",
    now: float = NOW + 1,
) -> str:
    with pytest.raises(TaskTokenRefused) as caught:
        verify_task_token(public, token, agent_id=agent_id, task_id=task_id, now=now)
    return caught.value.reason


def test_a_token_for_this_agent_and_task_is_accepted() -> None:
    verify_task_token(PUBLIC, _token(), agent_id="agent-1", task_id="run:n:0:1", now=NOW + 59)


def test_the_keypair_is_pem() -> None:
    assert PRIVATE.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert PUBLIC.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_an_expired_token_is_refused() -> None:
    assert _refusal(_token(ttl=60.0), now=NOW + 60) == "token expired"


def test_a_token_for_another_agent_is_refused() -> None:
    assert _refusal(_token(), agent_id="agent-2") == "token is for another agent"


def test_a_token_for_another_task_is_refused() -> None:
    assert _refusal(_token(), task_id="run:n:0:2") == "token is for another task"


def test_a_tampered_token_is_refused() -> None:
    import base64
    import json

    token = _token()
    payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["aud"] = "agent-2"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _refusal(f"{forged}.{signature}", agent_id="agent-2") == "bad signature"


def test_a_token_signed_by_another_key_is_refused() -> None:
    _, other_public = generate_keypair()
    assert _refusal(_token(), public=other_public) == "bad signature"


@pytest.mark.parametrize("token", ["", "abc", "abc.", ".abc", "a.b.c", "x" * 5000, "é.é"])
def test_garbage_is_refused_not_crashed_on(token: str) -> None:
    _refusal(token)


def test_a_token_issued_far_in_the_future_is_refused() -> None:
    assert _refusal(_token(now=NOW + 3600)) == "token issued in the future"


def test_a_signer_holding_its_key_signs_tokens_agents_accept() -> None:
    signer = TaskSigner(PRIVATE)
    for task_id in ("run:a:0:1", "run:b:0:1"):
        token = signer.sign(agent_id="agent-1", task_id=task_id, now=NOW)
        assert token == sign_task_token(PRIVATE, agent_id="agent-1", task_id=task_id, now=NOW)
        verify_task_token(PUBLIC, token, agent_id="agent-1", task_id=task_id, now=NOW + 1)
    assert (
        _refusal(
            signer.sign(agent_id="agent-1", task_id="run:a:0:1", now=NOW, ttl=5),
            task_id="run:a:0:1",
            now=NOW + 6,
        )
        == "token expired"
    )


def test_a_signer_refuses_a_key_that_is_not_an_ed25519_private_key() -> None:
    with pytest.raises(ValueError):
        TaskSigner(PUBLIC)
