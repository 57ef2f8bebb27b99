"""Events of the cost context: what each LLM call cost, and the budgets that bound spend.

Amounts are exact decimals (``Decimal``, written as strings in JSON), never floats: a
spend report must add up to the cent however many calls it sums.

Two aggregates, both on the COSTS stream:

- ``cost``: ``cost.calls.priced``, many calls priced at once (a pricer's pull), on the
  aggregate ``pricer-<replica>`` of the replica that priced them; ``cost.price.unknown``
  (one per call no price is known for) on the run's own (id: the run id). Older streams
  hold ``cost.call.priced``, one per call on the run's aggregate: still read.
- ``budget``, one per budget (id: ``budget_id(scope, scope_id)``): its limits
  (``budget.set``, ``budget.removed``) and its ledger (``budget.reserved``,
  ``budget.settled``, ``budget.reservation_expired``, ``budget.soft_limit_reached``).
  Reservations are appended with the budget's expected version, so two executor
  replicas cannot both reserve the last dollar.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, TypeVar, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

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
    """One ``run.llm.called`` priced (until ``CallsPriced``: no longer appended, still
    read). Appended with ``Nats-Msg-Id`` = ``priced:<llm event id>``."""

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


MAX_PRICED_CALLS = 500
"""Calls in one ``cost.calls.priced``. A call takes about 400 bytes of JSON, 1.5 KB at
the longest ids and names this model allows: an event stays under NATS's default 1 MB
message size (with names outside ASCII, under the 8 MB Chiffon's NATS is configured
with)."""


class PricedCallItem(BaseModel):
    """One call of a ``CallsPriced``, as a row (``CallsPriced.calls()``): what
    ``CallPriced`` held but the prices and the price map's version, which are the
    batch's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    llm_event_id: str
    run_id: str
    workflow: str | None
    key_id: str | None
    agent_id: str | None
    node_id: str
    attempt: int
    provider: str
    model: str
    called_at: AwareDatetime
    prompt_tokens: int
    completion_tokens: int
    cached_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: Usd | None
    source: PriceSource


class ModelPrices(BaseModel):
    """The per-token prices the batch's calls of one provider and model were priced at
    (all None for a model whose price is unknown)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(max_length=MODEL_NAME_MAX_CHARS)
    model: str = Field(max_length=MODEL_NAME_MAX_CHARS)
    prices: Prices = Field(default_factory=Prices)


Tokens = Annotated[int, Field(ge=0)]
_T = TypeVar("_T")
Column = Annotated[list[_T], Field(max_length=MAX_PRICED_CALLS)]
"""A column of ``CallsPriced``: a value per call."""


class CallsPriced(EventPayload):
    """Calls priced together (one pull of the pricer), as a table: one column per field of
    a priced call, the i-th call in the i-th place of every column (``calls()`` gives them
    as rows); once per provider and model the prices its calls were priced at
    (``models``), and the price map's version.

    A call may be in two of these (priced again after a crash); the spend read models
    count it once, by ``llm_event_id``. The event id is derived from the calls' ids, so
    the same pull priced again is the same message and JetStream stores it once.

    Columns, not a list of call objects, and the prices per model, not per call: with a
    model per call (and its prices in each) a call took 410 bytes and, per call, 6.7 us
    to validate, 2.7 us to serialise and 7.7 us to read back; as columns 184 bytes and
    0.6, 1.2 and 1.2 us (pydantic-core loops over a column without a Python object per
    call), and the spend projection sends the columns to PostgreSQL as they are."""

    event_type = "cost.calls.priced"
    aggregate = "cost"

    llm_event_id: Column[Annotated[str, Field(max_length=64)]]
    run_id: Column[Annotated[str, Field(max_length=128)]]
    workflow: Column[Annotated[str, Field(max_length=WORKFLOW_NAME_MAX_CHARS)] | None]
    key_id: Column[Annotated[str, Field(max_length=200)] | None]
    agent_id: Column[Annotated[str, Field(max_length=128)] | None]
    node_id: Column[Annotated[str, Field(max_length=NODE_ID_MAX_CHARS)]]
    attempt: Column[Annotated[int, Field(ge=1)]]
    provider: Column[Annotated[str, Field(max_length=MODEL_NAME_MAX_CHARS)]]
    model: Column[Annotated[str, Field(max_length=MODEL_NAME_MAX_CHARS)]]
    called_at: Column[AwareDatetime]
    prompt_tokens: Column[Tokens]
    completion_tokens: Column[Tokens]
    cached_read_tokens: Column[Tokens]
    cache_write_tokens: Column[Tokens]
    reasoning_tokens: Column[Tokens]
    cost_usd: Column[Usd | None]  # None: the price is unknown
    source: Column[PriceSource]
    models: list[ModelPrices] = Field(max_length=MAX_PRICED_CALLS)
    price_map_version: str = Field(max_length=100, description="e.g. litellm-1.80.0")

    @model_validator(mode="after")
    def _one_row_per_call(self) -> CallsPriced:
        lengths = {len(getattr(self, name)) for name in CALL_COLUMNS}
        if len(lengths) != 1:
            raise ValueError("every column holds one value per call")
        if not lengths.pop():
            raise ValueError("at least one call")
        return self

    def __len__(self) -> int:
        return len(self.llm_event_id)

    def calls(self) -> list[PricedCallItem]:
        """The calls, as rows."""
        columns = [getattr(self, name) for name in CALL_COLUMNS]
        return [
            PricedCallItem.model_construct(**dict(zip(CALL_COLUMNS, row, strict=True)))
            for row in zip(*columns, strict=True)
        ]

    def prices_of(self, provider: str, model: str) -> Prices:
        """The prices the batch's calls of ``provider`` and ``model`` were priced at."""
        for entry in self.models:
            if (entry.provider, entry.model) == (provider, model):
                return entry.prices
        return Prices()


CALL_COLUMNS: tuple[str, ...] = tuple(PricedCallItem.model_fields)
"""The columns of ``CallsPriced``, in a ``cost_calls`` row's order."""


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
    CallsPriced,
    PriceUnknown,
    BudgetSet,
    BudgetRemoved,
    BudgetReserved,
    BudgetSettled,
    ReservationExpired,
    SoftLimitReached,
)
