"""Which provider failures are retried, and after how long: the classifier on LiteLLM's own
exception classes, the ``Retry-After`` reader and the node's retry delay."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from chiffon.executor.models import ProviderError
from chiffon.executor.models.litellm_client import LiteLlmClient  # noqa: F401 — sets LiteLLM's env
from chiffon.executor.models.provider_errors import (
    MAX_RETRY_AFTER_S,
    ProviderErrorClassifier,
    retry_after_seconds,
)
from chiffon.executor.nodes.llm import no_model_answered
from chiffon.executor.nodes.retry import retry_delay
from chiffon.workflow import RetryPolicy

litellm = pytest.importorskip("litellm")
MODEL, PROVIDER = "openai/gpt-4o-mini", "openai"
REQUEST = httpx.Request("POST", "http://provider.test/v1/chat/completions")


def response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=REQUEST)


def raised(cls: Any, *args: Any, **kwargs: Any) -> ProviderError:
    error = cls(*args, **kwargs)
    return ProviderErrorClassifier(litellm).classify(error, model=MODEL, provider=PROVIDER)


def common(**more: Any) -> dict[str, Any]:
    return {"message": "m", "llm_provider": PROVIDER, "model": MODEL, **more}


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: litellm.AuthenticationError(**common()), "provider_auth"),
        (
            lambda: litellm.PermissionDeniedError(**common(response=response(403))),
            "provider_permission",
        ),
        (lambda: litellm.NotFoundError(**common()), "provider_not_found"),
        (lambda: litellm.BadRequestError(**common()), "provider_bad_request"),
        (
            lambda: litellm.ContextWindowExceededError(
                message="This model's maximum context length is 8192 tokens",
                llm_provider=PROVIDER,
                model=MODEL,
            ),
            "context_window_exceeded",
        ),
        (lambda: litellm.ContentPolicyViolationError(**common()), "content_policy"),
        # An OpenAI-compatible server's 401 whose body says invalid_request_error:
        # LiteLLM raises a BadRequestError that keeps the provider's status.
        (
            lambda: litellm.BadRequestError(**common(response=response(401))),
            "provider_auth",
        ),
    ],
)
def test_errors_no_retry_can_cure_fail_at_once(make: Any, kind: str) -> None:
    error = ProviderErrorClassifier(litellm).classify(make(), model=MODEL, provider=PROVIDER)

    assert (error.kind, error.retryable, error.retry_after) == (kind, False, None)
    assert error.model == MODEL and error.provider == PROVIDER
    assert str(error).startswith(f"{MODEL}: ")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: litellm.RateLimitError(**common()), "provider_rate_limit"),
        (lambda: litellm.InternalServerError(**common()), "provider_error"),
        (lambda: litellm.ServiceUnavailableError(**common()), "provider_error"),
        (lambda: litellm.BadGatewayError(**common()), "provider_error"),
        (lambda: litellm.APIConnectionError(**common()), "provider_connection"),
        (lambda: litellm.Timeout(**common()), "timeout"),
        (lambda: litellm.BadRequestError(**common(response=response(503))), "provider_error"),
        (lambda: litellm.BadRequestError(**common(response=response(429))), "provider_rate_limit"),
        (lambda: RuntimeError("something else"), "provider_error"),
    ],
)
def test_transient_errors_are_retried(make: Any, kind: str) -> None:
    error = ProviderErrorClassifier(litellm).classify(make(), model=MODEL, provider=PROVIDER)

    assert (error.kind, error.retryable) == (kind, True)


def test_a_rate_limit_carries_the_providers_retry_after() -> None:
    error = litellm.RateLimitError(**common(response=response(429, {"Retry-After": "7"})))
    assert ProviderErrorClassifier(litellm).classify(
        error, model=MODEL, provider=PROVIDER
    ).retry_after == pytest.approx(7.0)

    # As LiteLLM's exception mapping leaves it: the provider's headers on the error.
    mapped = litellm.BadRequestError(**common(response=response(429)))
    mapped.litellm_response_headers = {"retry-after-ms": "1500"}
    classified = ProviderErrorClassifier(litellm).classify(mapped, model=MODEL, provider=PROVIDER)
    assert (classified.kind, classified.retry_after) == ("provider_rate_limit", 1.5)


def test_a_refusal_ignores_a_retry_after() -> None:
    error = litellm.AuthenticationError(**common(response=response(401, {"Retry-After": "5"})))

    assert (
        ProviderErrorClassifier(litellm).classify(error, model=MODEL, provider=PROVIDER).retry_after
        is None
    )


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "1"}, 1.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"RETRY-AFTER-MS": "1500", "Retry-After": "9"}, 1.5),  # the finer one wins
        ({"Retry-After": format_datetime(NOW.replace(second=30), usegmt=True)}, 30.0),
        ({"Retry-After": "Sun, 01 Mar 2026 11:00:00 GMT"}, 0.0),  # already past: no wait
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "86400"}, MAX_RETRY_AFTER_S),  # cut to the cap
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({}, None),
    ],
)
def test_retry_after_in_seconds_or_as_an_http_date(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after_seconds(headers, now=NOW) == seconds


def test_the_retry_waits_the_longer_of_backoff_and_retry_after() -> None:
    quick = RetryPolicy.model_validate({"attempts": 3, "backoff": {"initial": 0.01}})
    slow = RetryPolicy.model_validate({"attempts": 3, "backoff": {"initial": 5}})

    assert retry_delay(quick, 1, None) == pytest.approx(0.01)
    assert retry_delay(quick, 1, 1.0) == 1.0
    assert retry_delay(slow, 1, 1.0) == 5.0
    assert retry_delay(slow, 2, None) == 10.0


def provider_error(kind: str, retryable: bool, retry_after: float | None = None) -> ProviderError:
    return ProviderError(MODEL, kind, kind=kind, retryable=retryable, retry_after=retry_after)


def test_an_attempt_is_retried_if_any_model_may_answer_next_time() -> None:
    models = ["openai/a", "openai/b", "openai/c"]

    refused = no_model_answered(
        models[:2],
        [provider_error("provider_auth", False), provider_error("content_policy", False)],
    )
    assert (refused.kind, refused.retryable, refused.retry_after) == ("content_policy", False, None)
    assert str(refused).startswith("no model answered (tried openai/a, openai/b): ")

    busy = no_model_answered(
        models,
        [
            provider_error("provider_rate_limit", True, 2.0),
            provider_error("provider_rate_limit", True, 4.0),
            provider_error("provider_auth", False),
        ],
    )
    assert (busy.kind, busy.retryable, busy.retry_after) == ("provider_rate_limit", True, 4.0)
