"""The pricer: every ``run.llm.called`` priced into a ``cost.call.priced`` event.

A durable consumer of the RUNS stream shared by every cost replica (each call goes to
one of them) takes ``run.requested`` (to learn a run's workflow and API key) and
``run.llm.called``. A pull's calls are priced with the ``PriceBook`` and appended
together (``append_many``: one pipelined round of publishes), then acknowledged: a crash
before the ack delivers them again, a crash after it has nothing left to do.

Priced exactly once: each priced event's id (and so its ``Nats-Msg-Id``) is derived from
the call's event id (``uuid5("priced:<llm event id>")``), so a redelivered call appended
again within JetStream's duplicate window stores nothing; past it, the spend projection
keeps the first row per ``llm_event_id``.

A run's workflow and key are remembered from its ``run.requested`` in an LRU; a call
whose run is not there (the request was priced before a restart, or by another replica)
reads the run's first event with ``read_aggregate``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from chiffon.core.logging import get_logger
from chiffon.events import CATALOG, Actor, Envelope, EventValidationError, new_event
from chiffon.events.costs import CallPriced, Prices, PriceUnknown
from chiffon.events.runs import LlmCalled, RunRequested
from chiffon.eventstore import ANY, AggregateKey, EventStore, EventStoreError
from chiffon.eventstore.port import WorkConsumer, WorkIntake, WorkItem
from chiffon.spend.prices import PriceBook

log = get_logger(__name__)

CONSUMER = "cost-pricer"
WORK_TYPES = ("run.requested", "run.llm.called")
RUNS_REMEMBERED = 100_000
_IDS = uuid5(NAMESPACE_URL, "https://chiffon.dev/cost/priced")


@dataclass(frozen=True, slots=True)
class RunOrigin:
    workflow: str | None
    key_id: str | None


def priced_event_id(llm_event_id: str, kind: str = "priced") -> UUID:
    """The priced event's id for a call: the same each time the call is priced."""
    return uuid5(_IDS, f"{kind}:{llm_event_id}")


def origin_of(event: Envelope[Any]) -> RunOrigin:
    """A run's workflow and API key, from its ``run.requested``."""
    payload = event.payload
    workflow = payload.workflow if isinstance(payload, RunRequested) else None
    key_id = event.actor.id if event.actor.kind == "api_key" else None
    return RunOrigin(workflow, key_id)


def price_events(
    book: PriceBook, call: Envelope[LlmCalled], origin: RunOrigin, actor: Actor
) -> list[Envelope[Any]]:
    """The events pricing one call: ``cost.call.priced``, and ``cost.price.unknown``
    when neither the map nor an override prices its model."""
    p = call.payload
    llm_id = str(call.event_id)
    priced = book.price_call(
        p.provider,
        p.model,
        prompt_tokens=p.prompt_tokens,
        completion_tokens=p.completion_tokens,
        cached_read_tokens=p.cached_read_tokens,
        cache_write_tokens=p.cache_write_tokens,
        reasoning_tokens=p.reasoning_tokens,
    )
    prices = priced.prices
    payload = CallPriced(
        llm_event_id=llm_id,
        run_id=call.aggregate_id,
        workflow=origin.workflow,
        key_id=origin.key_id,
        node_id=p.node_id,
        attempt=p.attempt,
        provider=p.provider,
        model=p.model,
        called_at=call.occurred_at,
        prompt_tokens=p.prompt_tokens,
        completion_tokens=p.completion_tokens,
        cached_read_tokens=p.cached_read_tokens,
        cache_write_tokens=p.cache_write_tokens,
        reasoning_tokens=p.reasoning_tokens,
        cost_usd=priced.cost_usd,
        source=priced.source,
        prices=Prices(
            input=prices.input,
            output=prices.output,
            cache_read=prices.cache_read,
            cache_write=prices.cache_write,
            reasoning=prices.reasoning,
        )
        if prices is not None
        else Prices(),
        price_map_version=book.version,
    )
    events: list[Envelope[Any]] = [_event(payload, call, actor, "priced")]
    if priced.cost_usd is None:
        unknown = PriceUnknown(
            llm_event_id=llm_id, provider=p.provider, model=p.model, price_map_version=book.version
        )
        events.append(_event(unknown, call, actor, "unknown"))
    return events


def _event(payload: Any, call: Envelope[Any], actor: Actor, kind: str) -> Envelope[Any]:
    event = new_event(
        payload,
        aggregate_id=call.aggregate_id,
        actor=actor,
        correlation_id=call.correlation_id,
        causation_id=str(call.event_id),
        trace=call.trace,
    )
    return event.model_copy(update={"event_id": priced_event_id(str(call.event_id), kind)})


class Pricer:
    """Prices the RUNS stream's calls into the COSTS stream (see the module's doc)."""

    def __init__(
        self,
        store: EventStore,
        book: PriceBook,
        actor: Actor,
        *,
        batch: int = 1000,
        ack_wait: float = 30.0,
        replicas: int = 1,
    ) -> None:
        self.store = store
        self.book = book
        self.actor = actor
        self.batch = batch
        self.ack_wait = ack_wait
        self.replicas = replicas
        self.priced = 0
        self._origins: OrderedDict[str, RunOrigin] = OrderedDict()
        self._intake: WorkIntake | None = None
        self._wake = asyncio.Event()

    def work_consumer(self) -> WorkConsumer:
        streams = self.store.streams
        return WorkConsumer(
            context="RUNS",
            name=CONSUMER,
            subjects=tuple(streams.type_filter("run", t) for t in WORK_TYPES),
            ack_wait=self.ack_wait,
            replicas=self.replicas,
        )

    async def setup(self) -> None:
        """Create (or update) the shared durable consumer; idempotent across replicas."""
        self._intake = await self.store.open_work_intake(self.work_consumer())
        self._intake.on_change = self._wake.set

    def healthy(self) -> tuple[bool, str | None]:
        ok = self._intake is not None and self.store.connected
        return ok, f"{self.priced} calls priced"

    async def run(self, stopping: asyncio.Event) -> None:
        """Pull, price, append, acknowledge; until ``stopping``."""
        assert self._intake is not None
        intake = self._intake
        stop_waiter = asyncio.create_task(stopping.wait())
        stop_waiter.add_done_callback(lambda _: self._wake.set())
        try:
            while not stopping.is_set():
                self._wake.clear()
                if intake.missing:
                    with contextlib.suppress(EventStoreError):
                        await intake.restore()
                items: list[WorkItem] = []
                while len(items) < self.batch and (item := intake.take()) is not None:
                    items.append(item)
                # Ask for the next pull before pricing this one, so NATS delivers it
                # while this one is priced.
                if intake.outstanding == 0:
                    try:
                        await intake.request(self.batch)
                    except EventStoreError as error:
                        log.warning("cost.pull_failed", error=str(error))
                        await asyncio.sleep(0.5)
                if items:
                    await self.price(items)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
        finally:
            stop_waiter.cancel()
            with contextlib.suppress(Exception):
                await intake.stop()

    async def price(self, items: Sequence[WorkItem]) -> None:
        """Price one pull's items and settle each (ack, nak for a retry, term if poison)."""
        calls: list[tuple[WorkItem, Envelope[LlmCalled]]] = []
        done: list[WorkItem] = []
        for item in items:
            try:
                event = CATALOG.decode(item.data)
            except (EventValidationError, ValueError) as error:
                log.error("cost.poison_work_item", sequence=item.sequence, error=str(error))
                await item.term()
                continue
            if isinstance(event.payload, RunRequested):
                self._remember(event.aggregate_id, origin_of(event))
                done.append(item)
            elif isinstance(event.payload, LlmCalled):
                calls.append((item, event))
            else:
                done.append(item)
        origins = await self._origins_of({call.aggregate_id for _, call in calls})
        batch: list[tuple[AggregateKey, Envelope[Any], Any]] = []
        owners: list[int] = []  # per batch entry: the index in ``calls``
        for index, (item, call) in enumerate(calls):
            try:
                events = price_events(self.book, call, origins[call.aggregate_id], self.actor)
            except ValueError as error:  # a call the cost events cannot hold (pydantic)
                log.error(
                    "cost.unpriceable_call",
                    sequence=item.sequence,
                    llm_event_id=str(call.event_id),
                    error=str(error).splitlines()[0],
                )
                await item.term()
                continue
            key = AggregateKey("cost", call.aggregate_id)
            for event in events:
                batch.append((key, event, ANY))
                owners.append(index)
        failed: set[int] = set()
        if batch:
            try:
                results = await self.store.append_many(batch)
            except EventStoreError as error:
                log.warning("cost.append_failed", calls=len(calls), error=str(error))
                results = [error] * len(batch)
            for owner, result in zip(owners, results, strict=True):
                if isinstance(result, EventStoreError):
                    failed.add(owner)
        for index, (item, _call) in enumerate(calls):
            if index in failed:
                await item.nak(delay=1.0)
            else:
                done.append(item)
        self.priced += len(calls) - len(failed)
        for item in done:
            await item.ack()

    def _remember(self, run_id: str, origin: RunOrigin) -> None:
        self._origins[run_id] = origin
        self._origins.move_to_end(run_id)
        if len(self._origins) > RUNS_REMEMBERED:
            self._origins.popitem(last=False)

    async def _origins_of(self, run_ids: set[str]) -> dict[str, RunOrigin]:
        found: dict[str, RunOrigin] = {}
        missing: list[str] = []
        for run_id in run_ids:
            origin = self._origins.get(run_id)
            if origin is None:
                missing.append(run_id)
            else:
                found[run_id] = origin
        if missing:
            read = await asyncio.gather(*(self._read_origin(r) for r in missing))
            for run_id, origin in zip(missing, read, strict=True):
                self._remember(run_id, origin)
                found[run_id] = origin
        return found

    async def _read_origin(self, run_id: str) -> RunOrigin:
        try:
            events, _ = await self.store.read_aggregate(AggregateKey("run", run_id))
        except EventStoreError as error:
            log.warning("cost.run_unread", run_id=run_id, error=str(error))
            return RunOrigin(None, None)
        for event in events:
            if isinstance(event.payload, RunRequested):
                return origin_of(event.envelope)
        return RunOrigin(None, None)
