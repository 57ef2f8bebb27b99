"""The pricer: every ``run.llm.called`` priced, a pull's calls into ``cost.calls.priced``.

A durable consumer of the RUNS stream shared by every cost replica (each call goes to
one of them) takes ``run.llm.called``. A pull's calls are priced with the ``PriceBook``, validated together
(one call into pydantic-core) and appended as one ``cost.calls.priced`` per
``MAX_PRICED_CALLS`` calls, on the replica's ``pricer-<actor id>`` cost aggregate (plus
a ``cost.price.unknown`` per call no price is known for, on the run's aggregate); then
each item is acknowledged (a publish each, no round trip: never AckAll, which would
acknowledge another replica's items of the shared consumer too). A crash before the acks
delivers them again, a crash after them has nothing left to do.

Counted exactly once: a batch event's id (and so its ``Nats-Msg-Id``) is derived from
its calls' event ids, so the same pull priced again stores nothing within JetStream's
duplicate window. A redelivered call priced in another batch (after a crash, pulls are
cut differently) is stored twice in the stream; the spend projection keeps the first row
per ``llm_event_id`` and adds to a run's totals only the rows it inserted.

A run's workflow and key come from its first event, ``run.requested``, read once per
run (``first_event``, one direct get; the runs of a pull are read at once) and kept in
an LRU.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
import orjson
from pydantic import ValidationError

from chiffon.core.logging import get_logger
from chiffon.events import CATALOG, Actor, Envelope, EventValidationError
from chiffon.events.costs import (
    CALL_COLUMNS,
    MAX_PRICED_CALLS,
    CallsPriced,
    Prices,
    PriceUnknown,
)
from chiffon.events.runs import LlmCalled, RunRequested
from chiffon.eventstore import ANY, AggregateKey, EventStore, EventStoreError
from chiffon.eventstore.port import WorkConsumer, WorkIntake, WorkItem
from chiffon.spend.prices import ModelPrice, PriceBook

log = get_logger(__name__)

CONSUMER = "cost-pricer"
# One filter subject: JetStream serves a consumer with several filters on a slower path
# (a pull of 1,000 took 350-450 ms with run.requested beside run.llm.called, 36-42 ms
# with run.llm.called alone, on the same stream). A run's origin is read instead.
WORK_TYPES = ("run.llm.called",)
RUNS_REMEMBERED = 100_000
PRICING_AT_ONCE = 2  # pulls priced at once: one priced while the other's appends are acked
LINGER = 0.05  # seconds at most to wait for the rest of a pull that is still arriving
_IDS = uuid5(NAMESPACE_URL, "https://chiffon.dev/cost/priced")


@dataclass(frozen=True, slots=True)
class RunOrigin:
    workflow: str | None
    key_id: str | None


_IDS_BYTES = _IDS.bytes


def priced_event_id(llm_event_id: str, kind: str = "priced") -> UUID:
    """The priced event's id for a call: the same each time the call is priced.
    ``uuid5`` computed here, with the namespace's bytes taken once: ``uuid.uuid5``
    reads them again per call, a third of the pricer's CPU per call."""
    digest = hashlib.sha1(_IDS_BYTES + f"{kind}:{llm_event_id}".encode(), usedforsecurity=False)
    return UUID(bytes=digest.digest()[:16], version=5)


def _sequence(item: WorkItem) -> int:
    return item.sequence


def origin_of(event: Envelope[Any]) -> RunOrigin:
    """A run's workflow and API key, from its ``run.requested``."""
    payload = event.payload
    workflow = payload.workflow if isinstance(payload, RunRequested) else None
    key_id = event.actor.id if event.actor.kind == "api_key" else None
    return RunOrigin(workflow, key_id)


class CallPayload(msgspec.Struct, frozen=True):
    """What pricing reads of a ``run.llm.called``'s payload (its current schema)."""

    node_id: str
    attempt: int
    provider: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class Call(msgspec.Struct, frozen=True):
    """What pricing reads of a ``run.llm.called``: its envelope's ids and its payload."""

    event_id: str
    run_id: str = msgspec.field(name="aggregate_id")
    occurred_at: datetime
    payload: CallPayload
    correlation_id: str | None = None
    trace: str | None = None
    schema_version: int = 0


_CALL = msgspec.json.Decoder(Call)
_CALL_SUBJECT_END = "." + LlmCalled.event_type


def read_work(data: bytes, subject: str | None = None) -> tuple[str, Call | RunOrigin | None]:
    """A work item's event: a call to price, a run's origin, or None (another type).

    A call is decoded straight into ``Call`` (msgspec: only the fields pricing reads,
    their types checked), not validated into the event's pydantic model: the store
    validated it when it was appended, and the pricer's own event is validated before
    its append. (Against the whole document read with orjson and then picked apart:
    10.3 against 14.9 us per call for reading and pricing one, medians of 7 over the
    same 2,800 calls.) An event of an older schema version takes the catalog's path
    (upcast, validate). The type is told by the stream subject's end when given.
    ``ValueError`` (or ``KeyError``) for a document that is not an event."""
    if subject is None or not subject.endswith(_CALL_SUBJECT_END):
        raw = orjson.loads(data)
        kind = raw["type"]
        if kind == RunRequested.event_type:
            actor = raw["actor"]
            key_id = actor["id"] if actor["kind"] == "api_key" else None
            return kind, RunOrigin(raw["payload"].get("workflow"), key_id)
        if kind != LlmCalled.event_type:
            return kind, None
    call = _CALL.decode(data)
    if call.schema_version != LlmCalled.schema_version:
        call = _CALL.decode(CATALOG.decode(data).model_dump_json())
    return LlmCalled.event_type, call


Row = tuple[Any, ...]
"""A priced call, its values in ``CALL_COLUMNS`` order (not validated yet)."""


def priced_call(book: PriceBook, call: Call, origin: RunOrigin) -> tuple[Row, Prices]:
    """A call priced: its row of a ``CallsPriced`` (validated with the rest of its batch,
    in one call into pydantic-core), and the prices of its model."""
    p = call.payload
    provider, model = p.provider, p.model
    prompt = p.prompt_tokens
    completion = p.completion_tokens
    cached = p.cached_read_tokens
    written = p.cache_write_tokens
    reasoning = p.reasoning_tokens
    rate = book.rate(provider, model)
    at = call.occurred_at
    row = (
        call.event_id,
        call.run_id,
        origin.workflow,
        origin.key_id,
        None,  # agent_id: run.llm.called does not say which agent ran the node
        p.node_id,
        p.attempt,
        provider,
        model,
        at if at.tzinfo else at.replace(tzinfo=UTC),
        prompt,
        completion,
        cached,
        written,
        reasoning,
        rate.cost(prompt, completion, cached, written, reasoning),
        rate.source,
    )
    return row, _prices(rate.prices)


def calls_priced(
    rows: Sequence[Row], prices: Mapping[tuple[str, str], Prices], version: str
) -> tuple[CallsPriced | None, dict[int, str]]:
    """``rows`` (``MAX_PRICED_CALLS`` at most) validated into one ``CallsPriced``, and per
    row a cost event cannot hold (a name past its limit), its index and the first
    reason: those are left out (None: no row is left)."""
    bad: dict[int, str] = {}
    while True:
        kept = [row for index, row in enumerate(rows) if index not in bad]
        if not kept:
            return None, bad
        positions = [index for index in range(len(rows)) if index not in bad]
        models = sorted({(row[_PROVIDER], row[_MODEL]) for row in kept})
        columns = map(list, zip(*kept, strict=True))  # the rows, transposed
        document: dict[str, Any] = dict(zip(CALL_COLUMNS, columns, strict=True))
        document["models"] = [  # validated with the columns: a bad name is its rows' fault
            {"provider": provider, "model": model, "prices": prices[provider, model]}
            for provider, model in models
        ]
        document["price_map_version"] = version
        try:
            return CallsPriced.model_validate(document), bad
        except ValidationError as error:
            found = len(bad)
            for problem in error.errors(include_url=False):
                location = problem["loc"]
                if (
                    len(location) > 1
                    and location[0] in CALL_COLUMNS
                    and isinstance(location[1], int)
                ):
                    index = positions[location[1]]
                    bad.setdefault(index, f"{location[0]}: {problem['msg']}")
            if len(bad) == found:  # not one call's fault (a model's prices, say): all
                reason = str(error).splitlines()[0]
                return None, {index: reason for index in range(len(rows))}


_PROVIDER = CALL_COLUMNS.index("provider")
_MODEL = CALL_COLUMNS.index("model")
_COST = CALL_COLUMNS.index("cost_usd")


def batch_aggregate(actor: Actor) -> AggregateKey:
    """The ``cost`` aggregate a replica's batches go to: ``pricer-<its actor id>``. Appended
    with ANY version (nothing is decided from it), it only names who priced them."""
    return AggregateKey("cost", f"pricer-{actor.id}")


def batch_event_id(llm_event_ids: Sequence[str]) -> UUID:
    """The id of the batch event pricing these calls, whatever their order: the same
    pull priced again (a crash before its acks) is the same message, stored once."""
    return priced_event_id("\n".join(sorted(llm_event_ids)), "batch")


def batch_event(payload: CallsPriced, actor: Actor) -> Envelope[CallsPriced]:
    """The envelope of a ``cost.calls.priced`` (its payload validated already, and not
    again: pydantic takes a model instance as it is)."""
    key = batch_aggregate(actor)
    return Envelope[CallsPriced](
        event_id=batch_event_id(payload.llm_event_id),
        type=CallsPriced.event_type,
        schema_version=CallsPriced.schema_version,
        aggregate=key.aggregate,
        aggregate_id=key.aggregate_id,
        occurred_at=datetime.now(UTC),
        actor=actor,
        payload=payload,
    )


def unknown_event(call: Call, version: str, actor: Actor) -> Envelope[PriceUnknown]:
    """The warning for a call no price is known for (rare: one event per call)."""
    payload = PriceUnknown(
        llm_event_id=call.event_id,
        provider=call.payload.provider,
        model=call.payload.model,
        price_map_version=version,
    )
    return Envelope[PriceUnknown](
        event_id=priced_event_id(call.event_id, "unknown"),
        type=PriceUnknown.event_type,
        schema_version=PriceUnknown.schema_version,
        aggregate=PriceUnknown.aggregate,
        aggregate_id=call.run_id,
        occurred_at=datetime.now(UTC),
        correlation_id=call.correlation_id,
        causation_id=call.event_id,
        actor=actor,
        trace=call.trace,
        payload=payload,
    )


_PRICES: dict[int, tuple[ModelPrice, Prices]] = {}


def _prices(price: ModelPrice | None) -> Prices:
    """The event's copy of a model's prices (one per model, shared: it is frozen). Keyed
    by the price's id, with the price kept so that the id cannot be another's."""
    if price is None:
        return _NO_PRICES
    found = _PRICES.get(id(price))
    if found is None or found[0] is not price:
        found = _PRICES[id(price)] = (
            price,
            Prices(
                input=price.input,
                output=price.output,
                cache_read=price.cache_read,
                cache_write=price.cache_write,
                reasoning=price.reasoning,
            ),
        )
    return found[1]


_NO_PRICES = Prices()


class Pricer:
    """Prices the RUNS stream's calls into the COSTS stream (see the module's doc)."""

    def __init__(
        self,
        store: EventStore,
        book: PriceBook,
        actor: Actor,
        *,
        batch: int = 3000,
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
        """Pull, price, append, acknowledge; until ``stopping`` (pulls being priced then
        are finished and acknowledged first).

        Two pulls are priced at once, so one is priced while the other waits for its
        appends' acknowledgements, and the next pull is asked for as soon as the last
        one has arrived. (On the shared 2-core machine, taking turns: 2,873 and 3,491
        calls/s with one pull at a time, 4,246 and 2,923 with two: within its noise;
        kept for where the acknowledgements' round trip is longer.)"""
        assert self._intake is not None
        intake = self._intake
        stop_waiter = asyncio.create_task(stopping.wait())
        stop_waiter.add_done_callback(lambda _: self._wake.set())
        pricing: set[asyncio.Task[None]] = set()
        try:
            while not stopping.is_set():
                self._wake.clear()
                if intake.missing:
                    with contextlib.suppress(EventStoreError):
                        await intake.restore()
                if intake.outstanding == 0:
                    try:
                        await intake.request(self.batch)
                    except EventStoreError as error:
                        log.warning("cost.pull_failed", error=str(error))
                        await asyncio.sleep(0.5)
                items = self._take(intake)
                if items and len(items) < self.batch and intake.outstanding > 0:
                    items += await self._rest_of_pull(intake, self.batch - len(items))
                if items:
                    task = asyncio.create_task(self.price(items))
                    pricing.add(task)
                    task.add_done_callback(self._priced)
                    task.add_done_callback(pricing.discard)
                    if len(pricing) >= PRICING_AT_ONCE:
                        await asyncio.wait(pricing, return_when=asyncio.FIRST_COMPLETED)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
        finally:
            stop_waiter.cancel()
            if pricing:
                await asyncio.wait(pricing)
            with contextlib.suppress(Exception):
                await intake.stop()

    async def _rest_of_pull(self, intake: WorkIntake, most: int) -> list[WorkItem]:
        """The items of a pull still arriving, up to ``most``, waited for until it ends or
        ``LINGER`` has passed: one batch event of it rather than one per wake-up. (Waiting
        for one wake-up only cut a pull of 1,000 into events of 40 to 130 calls.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER
        items: list[WorkItem] = []
        while len(items) < most and intake.outstanding > 0:
            left = deadline - loop.time()
            if left <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)
            items += self._take(intake, most - len(items))
        return items

    def _take(self, intake: WorkIntake, most: int | None = None) -> list[WorkItem]:
        items: list[WorkItem] = []
        limit = self.batch if most is None else most
        while len(items) < limit and (item := intake.take()) is not None:
            items.append(item)
        return items

    def _priced(self, task: asyncio.Task[None]) -> None:
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            # Its items were not acknowledged: they come again after the ack wait.
            log.error("cost.pricing_failed", error=repr(task.exception()))

    async def price(self, items: Sequence[WorkItem]) -> None:
        """Price one pull's items and settle each (ack, nak for a retry, term if poison)."""
        calls: list[tuple[WorkItem, Call]] = []
        done: list[WorkItem] = []
        for item in sorted(items, key=_sequence):
            try:
                kind, read = read_work(item.data, item.subject)
            except (EventValidationError, ValueError, KeyError, TypeError) as error:
                log.error("cost.poison_work_item", sequence=item.sequence, error=str(error))
                await item.term()
                continue
            if isinstance(read, Call):
                calls.append((item, read))
            else:
                if isinstance(read, RunOrigin):
                    self._remember(item.subject.split(".")[2], read)
                done.append(item)
        try:
            origins = await self._origins_of({call.run_id for _, call in calls})
        except EventStoreError as error:
            # A run's workflow and key unread (NATS trouble): price them later, not
            # without them.
            log.warning("cost.runs_unread", calls=len(calls), error=str(error))
            for item, _call in calls:
                await item.nak(delay=1.0)
            await self._settle(done)
            return
        rows: list[Row] = []
        prices: dict[tuple[str, str], Prices] = {}
        pricing: list[tuple[WorkItem, Call]] = []
        for item, call in calls:
            try:
                row, model_prices = priced_call(self.book, call, origins[call.run_id])
            except (ValueError, KeyError, TypeError, ArithmeticError) as error:
                await self._unpriceable(item, call, str(error))
                continue
            rows.append(row)
            prices[row[_PROVIDER], row[_MODEL]] = model_prices
            pricing.append((item, call))
        version = self.book.version
        events: list[Envelope[Any]] = []
        owners: list[list[int]] = []  # per event: the indices in ``pricing`` of its calls
        held: list[int] = []  # the calls in a batch event
        for start in range(0, len(rows), MAX_PRICED_CALLS):
            payload, bad = calls_priced(rows[start : start + MAX_PRICED_CALLS], prices, version)
            for index in sorted(bad):
                await self._unpriceable(*pricing[start + index], bad[index])
            if payload is None:
                continue
            events.append(batch_event(payload, self.actor))
            owned = [start + i for i in range(min(MAX_PRICED_CALLS, len(rows) - start))]
            owned = [index for index in owned if index - start not in bad]
            owners.append(owned)
            held += owned
            for index in owned:
                if rows[index][_COST] is None:
                    events.append(unknown_event(pricing[index][1], version, self.actor))
                    owners.append([index])
        failed: set[int] = set()
        if events:
            batch = [(AggregateKey(e.aggregate, e.aggregate_id), e, ANY) for e in events]
            try:
                results = await self.store.append_many(batch)
            except EventStoreError as error:
                log.warning("cost.append_failed", calls=len(held), error=str(error))
                results = [error] * len(batch)
            for owned, result in zip(owners, results, strict=True):
                if isinstance(result, EventStoreError):
                    failed.update(owned)
        for index in held:
            item = pricing[index][0]
            if index in failed:
                await item.nak(delay=1.0)
            else:
                done.append(item)
        self.priced += len(held) - len(failed)
        await self._settle(done)

    async def _settle(self, done: list[WorkItem]) -> None:
        if self._intake is not None:
            await self._intake.ack(done)  # one write for the pull
        else:
            for item in done:
                await item.ack()

    async def _unpriceable(self, item: WorkItem, call: Call, reason: str) -> None:
        """A call no cost event can hold (a field past its limit): never priced, and
        said so; the rest of its pull is."""
        log.error(
            "cost.unpriceable_call",
            sequence=item.sequence,
            llm_event_id=call.event_id,
            error=reason.splitlines()[0] if reason else reason,
        )
        await item.term()

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
        first = await self.store.first_event(AggregateKey("run", run_id))
        if first is not None and isinstance(first.payload, RunRequested):
            return origin_of(first.envelope)
        return RunOrigin(None, None)
