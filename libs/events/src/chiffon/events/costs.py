"""Events of the cost context: what each LLM call cost, and the budgets that bound spend.

Amounts are exact decimals (``Decimal``, written as strings in JSON), never floats: a
spend report must add up to the cent however many calls it sums.

Two aggregates, both on the COSTS stream:

- ``cost``, one per run (id: the run id): ``cost.call.priced`` for each
  ``run.llm.called`` of the run, and ``cost.price.unknown`` when no price is known.
- ``budget``, one per budget (id: ``budget_id(scope, scope_id)``): its limits
  (``budget.set``, ``budget.removed``) and its ledger (``budget.reserved``,
  ``budget.settled``, ``budget.reservation_expired``, ``budget.soft_limit_reached``).
  Reservations are appended with the budget's expected version, so two executor
  replicas cannot both reserve the last dollar.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from chiffon.events.envelope import EventPayload
from chiffon.events.limits import (
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    WORKFLOW_NAME_MAX_CHARS,
)

Usd = Annotated[Decimal, Field(ge=0, le=Decimal("1e12"), allow_inf_nan=False)]
"""An amount in US dollars, exact; never negative."""

PerToken = Annotated[Decimal, Field(ge=0, le=Decimal("1e6"), allow_inf_nan=False)]
"""A price per token in US dollars."""

BudgetScope = Literal["global", "workflow", "key", "run"]
BUDGET_SCOPES: tuple[BudgetScope, ...] = get_args(BudgetScope)
BudgetPeriod = Literal["day", "month", "lifetime"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = get_args(BudgetPeriod)

PriceSource = Literal["price_map", "override", "local", "unknown"]
"""Where a call's price came from: LiteLLM's bundled map, a per-model override in
settings, a local provider (``ollama*``, ``chiffon/*``: always 0), or nowhere."""


def budget_id(scope: BudgetScope, scope_id: str) -> str:
    """The budget aggregate's id: ``global``, or ``<scope>_<id>`` (``workflow_triage``,
    ``key_<key id>``, ``run_<run id>``). Scope names hold no ``_``, so the first ``_``
    splits it back."""
    return "global" if scope == "global" else f"{scope}_{scope_id}"


# -- the cost aggregate (one per run) -------------------------------------------------------


class Prices(BaseModel):
    """The per-token prices a call was priced at (None: the map has no such price)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: PerToken | None = None
    output: PerToken | None = None
    cache_read: PerToken | None = None
    cache_write: PerToken | None = None
    reasoning: PerToken | None = None


class CallPriced(EventPayload):
    """One ``run.llm.called`` priced. Appended with ``Nats-Msg-Id`` =
    ``priced:<llm event id>``, so a redelivered call is priced once."""

    event_type = "cost.call.priced"
    aggregate = "cost"

    llm_event_id: str = Field(max_length=64)
    run_id: str = Field(max_length=128)
    workflow: str | None = Field(default=None, max_length=WORKFLOW_NAME_MAX_CHARS)
    key_id: str | None = Field(default=None, max_length=200, description="the run's API key")
    agent_id: str | None = Field(default=None, max_length=128)
    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    attempt: int = Field(ge=1)
    provider: str = Field(max_length=MODEL_NAME_MAX_CHARS)
    model: str = Field(max_length=MODEL_NAME_MAX_CHARS)
    called_at: AwareDatetime
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)
    cost_usd: Usd | None = Field(description="None when the price is unknown")
    source: PriceSource
    prices: Prices = Field(default_factory=Prices)
    price_map_version: str = Field(max_length=100, description="e.g. litellm-1.80.0")


class PriceUnknown(EventPayload):
    """A warning: a call to a model that neither the price map nor an override prices.
    Its spend is unknown, not zero."""

    event_type = "cost.price.unknown"
    aggregate = "cost"

    llm_event_id: str = Field(max_length=64)
    provider: str = Field(max_length=MODEL_NAME_MAX_CHARS)
    model: str = Field(max_length=MODEL_NAME_MAX_CHARS)
    price_map_version: str = Field(max_length=100)


# -- the budget aggregate -------------------------------------------------------------------


class BudgetSet(EventPayload):
    """A budget created or changed (the envelope's actor says who)."""

    event_type = "budget.set"
    aggregate = "budget"

    scope: BudgetScope
    scope_id: str = Field(min_length=1, max_length=128)
    period: BudgetPeriod
    hard_usd: Usd | None = None
    soft_usd: Usd | None = None
    timezone: str = Field(default="UTC", max_length=64, description="an IANA zone name")


class BudgetRemoved(EventPayload):
    event_type = "budget.removed"
    aggregate = "budget"


class Reservation(BaseModel):
    """A call's worst-case cost held against a budget until the call ends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(max_length=200, description="run id : node id : attempt : fallback index")
    amount_usd: Usd
    period: str = Field(
        max_length=40, description="the period it counts in: 2026-12-07, 2026-12, all"
    )
    expires_at: AwareDatetime
    run_id: str = Field(max_length=128)
    node_id: str = Field(max_length=NODE_ID_MAX_CHARS)
    model: str = Field(max_length=MODEL_NAME_MAX_CHARS)


class BudgetReserved(EventPayload):
    """One or more reservations (one replica's concurrent calls, committed together)."""

    event_type = "budget.reserved"
    aggregate = "budget"

    reservations: list[Reservation] = Field(min_length=1, max_length=1000)


class Settlement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reservation_id: str = Field(max_length=200)
    actual_usd: Usd = Field(description="0 when the call never went out")


class BudgetSettled(EventPayload):
    """Reservations ended: each one's real cost counts as spent in its period, the rest is
    released."""

    event_type = "budget.settled"
    aggregate = "budget"

    settlements: list[Settlement] = Field(min_length=1, max_length=1000)


class ReservationExpired(EventPayload):
    """For the audit trail: reservations whose holder never settled them (its replica
    died). The ledger already stopped counting them at their ``expires_at``."""

    event_type = "budget.reservation_expired"
    aggregate = "budget"

    reservation_ids: list[str] = Field(min_length=1, max_length=1000)


class SoftLimitReached(EventPayload):
    """An alert: spend in a period reached the soft limit (once per period)."""

    event_type = "budget.soft_limit_reached"
    aggregate = "budget"

    period: str = Field(max_length=40)
    spent_usd: Usd
    soft_usd: Usd


COST_EVENTS: tuple[type[EventPayload], ...] = (
    CallPriced,
    PriceUnknown,
    BudgetSet,
    BudgetRemoved,
    BudgetReserved,
    BudgetSettled,
    ReservationExpired,
    SoftLimitReached,
)
