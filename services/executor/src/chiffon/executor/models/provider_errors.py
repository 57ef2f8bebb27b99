"""Which provider failures a retry can cure, and how long the provider asked us to wait.

Temporal's rule, for one layer of retries (the node's policy): an error that cannot
succeed on another try fails the attempt at once and says why, a 401 or a 400 spent
``attempts`` times only delays the failure and bills the calls. Transient ones (a rate
limit, a 5xx, a dropped connection, a timeout) are retried with the node's backoff, and
not sooner than a ``Retry-After`` the provider sent.

LiteLLM maps every provider's errors onto its exception classes, but not always by
status: an OpenAI-compatible body saying ``invalid_request_error`` becomes a
``BadRequestError`` whatever the status (a 401, a 429, a 503 from vLLM or a proxy). The
HTTP status it keeps on the error (``status_code``, the provider's own) is the surer
guide, so it decides first; the classes decide what a status cannot tell (a 400 that is a
context-window or content-policy refusal) and failures without an HTTP answer (a
connection refused, a timeout). The classes come from the LiteLLM module handed in, so
this module imports nothing heavy and the executor still imports LiteLLM once, at start.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from chiffon.executor.models.base import ProviderError

# Error types (``ErrorInfo.type``) of provider failures, the ones no retry can cure first.
PROVIDER_AUTH = "provider_auth"
PROVIDER_PERMISSION = "provider_permission"
PROVIDER_BAD_REQUEST = "provider_bad_request"
PROVIDER_NOT_FOUND = "provider_not_found"
CONTENT_POLICY = "content_policy"
CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
PROVIDER_RATE_LIMIT = "provider_rate_limit"
PROVIDER_CONNECTION = "provider_connection"
PROVIDER_ERROR = "provider_error"  # a 5xx, or a failure nothing more specific names
TIMEOUT = "timeout"

# The provider's HTTP status, where it says all there is to say. Not 400: the classes
# tell a context-window or content-policy refusal from another bad request.
_BY_STATUS: dict[int, tuple[str, bool]] = {
    401: (PROVIDER_AUTH, False),
    402: (PROVIDER_BAD_REQUEST, False),
    403: (PROVIDER_PERMISSION, False),
    404: (PROVIDER_NOT_FOUND, False),
    408: (TIMEOUT, True),
    409: (PROVIDER_ERROR, True),
    413: (PROVIDER_BAD_REQUEST, False),
    422: (PROVIDER_BAD_REQUEST, False),
    429: (PROVIDER_RATE_LIMIT, True),
}

MAX_RETRY_AFTER_S = 300.0
"""A longer ``Retry-After`` is cut to this: five minutes is what the big providers ask for
at most on a rate limit, and a run should not sleep on a misconfigured proxy's value."""


class ProviderErrorClassifier:
    """Turns an exception of a LiteLLM call into a typed ``ProviderError``."""

    def __init__(self, litellm: Any) -> None:
        # No HTTP answer at all: their status codes are LiteLLM's stand-ins.
        self._unanswered: tuple[tuple[type[BaseException], str, bool], ...] = (
            (litellm.Timeout, TIMEOUT, True),
            (litellm.APIConnectionError, PROVIDER_CONNECTION, True),
        )
        # Subclasses first: a context-window or content-policy error is a BadRequestError.
        self._classes: tuple[tuple[type[BaseException], str, bool], ...] = (
            (litellm.ContextWindowExceededError, CONTEXT_WINDOW_EXCEEDED, False),
            (litellm.ContentPolicyViolationError, CONTENT_POLICY, False),
            (litellm.AuthenticationError, PROVIDER_AUTH, False),
            (litellm.PermissionDeniedError, PROVIDER_PERMISSION, False),
            (litellm.NotFoundError, PROVIDER_NOT_FOUND, False),
            (litellm.BadRequestError, PROVIDER_BAD_REQUEST, False),
            (litellm.UnprocessableEntityError, PROVIDER_BAD_REQUEST, False),
            (litellm.RateLimitError, PROVIDER_RATE_LIMIT, True),
            (litellm.InternalServerError, PROVIDER_ERROR, True),
            (litellm.ServiceUnavailableError, PROVIDER_ERROR, True),
            (litellm.BadGatewayError, PROVIDER_ERROR, True),
        )

    def classify(self, error: BaseException, *, model: str, provider: str) -> ProviderError:
        kind, retryable = self.kind_of(error)
        message = f"{model}: {type(error).__name__}: {error}"
        return ProviderError(
            model,
            message[:3900],
            kind=kind,
            provider=provider,
            retryable=retryable,
            retry_after=retry_after_of(error) if retryable else None,
        )

    def kind_of(self, error: BaseException) -> tuple[str, bool]:
        """(error type, whether a retry may succeed): see the module docstring."""
        for cls, kind, retryable in self._unanswered:
            if isinstance(error, cls):
                return kind, retryable
        status = getattr(error, "status_code", None)
        if isinstance(status, int):
            if status in _BY_STATUS:
                return _BY_STATUS[status]
            if status >= 500:
                return PROVIDER_ERROR, True
        for cls, kind, retryable in self._classes:
            if isinstance(error, cls):
                return kind, retryable
        if isinstance(status, int) and 400 <= status < 500:
            return PROVIDER_BAD_REQUEST, False
        if "timeout" in type(error).__name__.lower():
            return TIMEOUT, True
        return PROVIDER_ERROR, True


def retry_after_of(error: BaseException) -> float | None:
    """The wait the provider asked for in the failed response's headers, if any. LiteLLM
    keeps the provider's headers on ``litellm_response_headers`` (and on ``response``)."""
    for headers in (
        getattr(error, "litellm_response_headers", None),
        getattr(getattr(error, "response", None), "headers", None),
    ):
        if isinstance(headers, Mapping):
            found = retry_after_seconds(headers)
            if found is not None:
                return found
    return None


def retry_after_seconds(headers: Mapping[str, Any], *, now: datetime | None = None) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI, Azure) or ``Retry-After`` (RFC 9110: a
    number of seconds or an HTTP date), cut to ``MAX_RETRY_AFTER_S``; None if absent or
    unreadable. Header names are matched in any case."""
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    seconds: float | None = None
    if "retry-after-ms" in lowered:
        seconds = _number(lowered["retry-after-ms"])
        seconds = None if seconds is None else seconds / 1000
    if seconds is None and "retry-after" in lowered:
        value = lowered["retry-after"]
        seconds = _number(value)
        if seconds is None:
            seconds = _seconds_until(value, now or datetime.now(UTC))
    if seconds is None:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _seconds_until(http_date: str, now: datetime) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()
