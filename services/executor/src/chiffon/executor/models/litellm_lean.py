"""LiteLLM without the per-call bookkeeping that nothing in Chiffon reads.

After every call LiteLLM prices the response against its price map (for an unknown
model, a search through its generalisation rules) and builds a logging payload for its
callbacks. Chiffon uses neither: it records each call (model, tokens, latency, finish
reason) in an ``LlmCalled`` event, and the cost service prices tokens. Together the two
were about 45% of the CPU LiteLLM spends per call (3.9 against 2.2 ms on 2 cores), and an
executor replica's CPU per call decides how many calls it keeps in flight.

LiteLLM has no setting to turn them off, so ``skip_unused_bookkeeping`` wraps the two
methods. They still run in full whenever something would read them: a LiteLLM success
callback, a LiteLLM budget (``litellm.max_budget``). A LiteLLM version without these
methods is left as it is, with a warning.
"""

from __future__ import annotations

import functools
from typing import Any

from chiffon.core.logging import get_logger

log = get_logger(__name__)

_MARK = "_chiffon_lean"


def skip_unused_bookkeeping(litellm: Any) -> bool:
    """Skip pricing and success logging while nothing reads them. True once in place."""
    try:
        from litellm.litellm_core_utils.litellm_logging import Logging
    except ImportError:
        return _kept()
    if getattr(Logging, _MARK, False):
        return True
    price = getattr(Logging, "response_cost_calculator", None)
    log_success = getattr(Logging, "async_success_handler", None)
    restore = getattr(Logging, "_restore_correlation_context", None)
    if not (callable(price) and callable(log_success) and callable(restore)):
        return _kept()

    def read_by_litellm() -> bool:
        return bool(
            litellm.success_callback
            or litellm._async_success_callback
            or litellm.callbacks
            or litellm.max_budget
        )

    @functools.wraps(price)
    def response_cost_calculator(self: Any, *args: Any, **kwargs: Any) -> Any:
        return price(self, *args, **kwargs) if read_by_litellm() else None

    @functools.wraps(log_success)
    async def async_success_handler(self: Any, *args: Any, **kwargs: Any) -> Any:
        if read_by_litellm():
            return await log_success(self, *args, **kwargs)
        # What the handler always does last: put the caller's trace ids back.
        self._restore_correlation_context()
        return None

    Logging.response_cost_calculator = response_cost_calculator  # type: ignore[method-assign]
    Logging._response_cost_calculator = response_cost_calculator  # LiteLLM's own alias
    Logging.async_success_handler = async_success_handler  # type: ignore[method-assign]
    setattr(Logging, _MARK, True)
    return True


def _kept() -> bool:
    log.warning("llm.bookkeeping_kept", reason="this LiteLLM version has other internals")
    return False
