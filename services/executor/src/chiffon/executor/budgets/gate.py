"""What an llm node asks before and after each model call (see ``nodes.llm``).

Before: which hard budgets apply to the run (global, its workflow, its API key, itself),
what the call can cost at worst (the prompt's tokens counted, plus the node's
``max_tokens`` or the model's own output limit, at the dearest prices), and a
reservation of that much in every one of them. After: the reservation settled at the
call's real price. A zero-cost model (a local provider, or priced 0) never asks; a model
whose price is unknown is refused under a hard budget (``price_unknown``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from chiffon.core.logging import get_logger
from chiffon.events.costs import Reservation
from chiffon.executor.budgets.directory import BudgetDirectory
from chiffon.executor.budgets.reserver import Reserver
from chiffon.executor.domain import RunState
from chiffon.executor.models import ModelReply
from chiffon.spend.budgets import BudgetState
from chiffon.spend.prices import PriceBook, count_prompt_tokens, is_local

log = get_logger(__name__)

DEFAULT_GRACE_SECONDS = 30.0  # a reservation outlives its call's timeout by this much
NO_TIMEOUT_HOLD_SECONDS = 3600.0  # a call without a timeout: reserved for an hour


def provider_of(model: str) -> str:
    """The provider a model string names (LiteLLM's convention: ``openai`` by default)."""
    head, sep, _ = model.partition("/")
    return head if sep else "openai"


@dataclass(frozen=True)
class Refusal:
    """A call that must not go out: the budget it would cross (None: the price is
    unknown and every hard budget refuses it), its worst case, and what is left."""

    model: str
    reason: Literal["over_budget", "price_unknown"]
    budget: str | None
    needed_usd: Decimal | None
    remaining_usd: Decimal | None

    def describe(self) -> str:
        if self.reason == "price_unknown":
            return (
                f"{self.model} has no known price, and a hard budget applies"
                f" ({self.budget}): set a price override (CHIFFON_PRICE_OVERRIDES)"
            )
        return (
            f"{self.model} may cost up to ${self.needed_usd} and budget {self.budget}"
            f" has ${self.remaining_usd} left"
        )


class BudgetGate:
    """One replica's budget checks for its runs' model calls (see the module)."""

    def __init__(
        self,
        directory: BudgetDirectory,
        reserver: Reserver,
        prices: PriceBook,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.directory = directory
        self.reserver = reserver
        self.prices = prices
        self.grace = grace_seconds
        self.clock = clock

    def budgets_for(self, run: RunState) -> list[BudgetState]:
        """The hard budgets the run's calls count against."""
        request = run.request
        if request is None:
            return []
        actor = run.requested_by
        key_id = actor.id if actor is not None and actor.kind == "api_key" else None
        return [
            state
            for state in self.directory.applicable(request.workflow, key_id, run.run_id)
            if state.hard_usd is not None
        ]

    def is_zero_cost(self, model: str) -> bool:
        return self.prices.is_zero_cost(provider_of(model), model)

    def worst_case(
        self, model: str, messages: list[dict[str, str]], max_tokens: int | None
    ) -> Decimal | None:
        return self.prices.worst_case(
            provider_of(model),
            model,
            prompt_tokens=count_prompt_tokens(messages),
            max_output_tokens=max_tokens,
        )

    def short_budget(self, budgets: Sequence[BudgetState], percent: float) -> str | None:
        """The first budget whose remaining share of its hard limit is below
        ``percent`` (with that share, for the record), else None."""
        now = self.clock()
        for state in budgets:
            remaining = state.remaining(now)
            if remaining is None or state.hard_usd is None:
                continue
            share = (
                Decimal(0)
                if state.hard_usd <= 0
                else max(Decimal(0), remaining) * 100 / state.hard_usd
            )
            if share < Decimal(str(percent)):
                return f"budget {state.budget_id} has {share:.0f}% left"
        return None

    async def hold(
        self,
        budgets: Sequence[BudgetState],
        *,
        reservation_id: str,
        run_id: str,
        node_id: str,
        model: str,
        amount: Decimal | None,
        timeout: float | None,
    ) -> Refusal | None:
        """Reserve ``amount`` in every budget (None: held), or say why not."""
        if amount is None:
            return Refusal(model, "price_unknown", budgets[0].budget_id, None, None)
        now = self.clock()
        hold = (timeout if timeout is not None else NO_TIMEOUT_HOLD_SECONDS) + self.grace
        expires = now + timedelta(seconds=hold)

        def make(state: BudgetState) -> Reservation:
            return Reservation(
                id=reservation_id,
                amount_usd=amount,
                period=state.bounds(now).key,
                expires_at=expires,
                run_id=run_id,
                node_id=node_id,
                model=model,
            )

        refused = await self.reserver.reserve(budgets, make)
        if refused is None:
            return None
        return Refusal(
            model, "over_budget", refused.budget, refused.needed_usd, refused.remaining_usd
        )

    def release(
        self,
        budgets: Sequence[BudgetState],
        reservation_id: str,
        actual_usd: Decimal,
        reserved_usd: Decimal,
    ) -> None:
        """Settle the call's reservation at ``actual_usd``, the node not waiting for it
        (one round trip less per call; a settlement lost with its replica leaves the
        reservation to expire). A real cost above the reservation is recorded as it is,
        with a warning: the budget's remaining may go below zero."""
        if actual_usd > reserved_usd:
            log.warning(
                "budget.settled_above_reservation",
                reservation_id=reservation_id,
                reserved_usd=str(reserved_usd),
                actual_usd=str(actual_usd),
                budgets=[b.budget_id for b in budgets],
            )
        self.reserver.settle_soon(budgets, reservation_id, actual_usd)

    def cost_of(self, model: str, reply: ModelReply) -> Decimal:
        """What the call really cost, priced as the model it was reserved for (an
        offline stand-in for a provider without a key costs nothing)."""
        provider = provider_of(model)
        if is_local(reply.provider, reply.model) and not is_local(provider, model):
            return Decimal(0)
        priced = self.prices.price_call(
            provider,
            model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            cached_read_tokens=reply.cached_read_tokens,
            cache_write_tokens=reply.cache_write_tokens,
            reasoning_tokens=reply.reasoning_tokens,
        )
        return priced.cost_usd if priced.cost_usd is not None else Decimal(0)
