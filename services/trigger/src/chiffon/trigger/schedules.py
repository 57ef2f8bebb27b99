"""Cron schedules: the schedule commands, and the ticker that fires each tick once.

Every replica folds the TRIGGERS stream's ``schedule`` aggregates in memory (``start``
catches up, then a task follows the stream live), answers the schedule commands (one
queue group), and every ``schedule_poll_seconds`` looks for due ticks.

A tick fires exactly once across replicas and restarts, in two steps that may each be
repeated safely:

1. ``StartRun`` with the tick's idempotency key ``tick:<schedule>:<UTC ISO>`` as
   ``Actor.service("trigger")`` (no replica number): every replica that sends it, and a
   replica restarted after sending it, gets the same run id, and the executor starts
   one run.
2. ``schedule.fired`` appended with the schedule's expected version: of two replicas
   recording the same tick one lands; the other's conflict means the tick is recorded
   (or the schedule changed): it re-reads the schedule and decides again, without
   starting anything new. A replica killed between 1 and 2 leaves the tick due, so
   the next round (on any replica) sends the same ``StartRun`` (the same run) and
   records it.

Overlap reads the state of the schedule's last run from its events (read incrementally,
an ended run remembered): ``skip`` records ``tick_skipped{overlap}``, ``buffer_one``
records ``tick_skipped{buffered}`` and starts that tick's run once the running one has
ended, ``cancel_other`` sends ``CancelRun`` first, ``allow_all`` never looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from chiffon.commands import CommandBus, CommandRefused, CommandUnavailable, Refusal
from chiffon.commands.model import CancelRun, Command, StartRun, run_id_for
from chiffon.commands.triggers import (
    CreateSchedule,
    DeleteSchedule,
    ListSchedules,
    PauseSchedule,
    ResumeSchedule,
)
from chiffon.core.logging import get_logger
from chiffon.events import Actor, EventPayload, new_event
from chiffon.events.runs import RUN_ENDINGS, TriggerRef
from chiffon.events.triggers import TRIGGER_NAME_PATTERN
from chiffon.eventstore import (
    AggregateKey,
    ConcurrencyConflict,
    ConflictRetriesExhausted,
    EventStore,
    EventStoreError,
    RecordedEvent,
    retry_on_conflict,
)
from chiffon.trigger.schedule_domain import (
    ScheduleExists,
    ScheduleInvalid,
    ScheduleNotFound,
    ScheduleState,
    Tick,
    answer,
    decide_create,
    decide_delete,
    decide_overlap,
    decide_pause,
    decide_resume,
    due_ticks,
    evolve,
    fired,
    skipped,
    tick_key,
    tick_ref,
    validate_create,
)
from chiffon.trigger.settings import TriggerSettings

log = get_logger(__name__)

Clock = Callable[[], datetime]
T = TypeVar("T")
CONTEXT = "TRIGGERS"
RUN_ACTOR = Actor.service("trigger")
"""Who starts a schedule's runs: the same on every replica, so a tick's run id is too."""
START_ATTEMPTS = 4  # per tick and round when the executor does not answer; then next round
START_TIMEOUT = 5.0
RUNS_REMEMBERED = 1000  # runs whose state the ticker keeps before forgetting replaced ones
RECORD_ATTEMPTS = 5  # recording a started run against schedule changes landing meanwhile
_NAME = re.compile(TRIGGER_NAME_PATTERN)


def utc_now() -> datetime:
    return datetime.now(UTC)


class Schedules:
    """Answers the schedule commands and fires due ticks (see the module docstring)."""

    def __init__(
        self,
        store: EventStore,
        bus: CommandBus,
        actor: Actor,
        settings: TriggerSettings,
        *,
        clock: Clock = utc_now,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self._store = store
        self._start_timeout = start_timeout
        self._bus = bus
        self._actor = actor
        self._clock = clock
        self._poll = settings.schedule_poll_seconds
        self.schedules: dict[str, ScheduleState] = {}
        self._position = 0  # every schedule event up to this stream sequence is folded
        self._following: asyncio.Task[None] | None = None
        # The runs the overlap policies look at: the version read so far, and those ended.
        self._run_versions: dict[str, int] = {}
        self._ended: set[str] = set()
        self._round_error: str | None = None

    # -- the fold ------------------------------------------------------------------------

    def apply(self, event: RecordedEvent) -> None:
        """Fold one event of the TRIGGERS stream (schedule events only; each once)."""
        if event.envelope.aggregate != "schedule":
            return
        name = event.envelope.aggregate_id
        state = self.schedules.get(name) or ScheduleState(name=name)
        if event.sequence > state.version:
            self.schedules[name] = evolve(state, event.envelope, event.sequence)

    def _subject(self) -> str:
        return f"{self._store.streams.namespace}.schedule.>"

    async def start(self) -> None:
        """Fold the schedules so far; return once caught up (then follow live)."""
        await self._catch_up()
        self._following = asyncio.create_task(
            self._follow(self._position + 1), name="trigger:schedules-fold"
        )

    async def _catch_up(self) -> None:
        end = await self._store.last_sequence(CONTEXT)
        if end <= self._position:
            return
        async for batch in self._store.subscribe_batches(
            CONTEXT, start=self._position + 1, subjects=[self._subject()], live=False
        ):
            for event in batch:
                self.apply(event)
        self._position = max(self._position, end)

    async def _follow(self, start: int) -> None:
        async for batch in self._store.subscribe_batches(
            CONTEXT, start=start, subjects=[self._subject()]
        ):
            for event in batch:
                self.apply(event)
                self._position = max(self._position, event.sequence)

    async def _load(self, name: str) -> ScheduleState:
        """The schedule brought up to date from the store."""
        state = self.schedules.get(name) or ScheduleState(name=name)
        events, _ = await self._store.read_aggregate(
            AggregateKey("schedule", name), after=state.version
        )
        for event in events:
            self.apply(event)
        return self.schedules.get(name) or state

    async def _append(
        self,
        state: ScheduleState,
        payloads: Sequence[EventPayload],
        actor: Actor,
        *,
        trace: str | None = None,
        idempotency_key: str | None = None,
    ) -> ScheduleState:
        """Append after ``state``'s version (``ConcurrencyConflict`` if it moved); the
        schedule with them folded in."""
        if not payloads:
            return state
        now = self._clock()
        envelopes = [
            new_event(p, aggregate_id=state.name, actor=actor, trace=trace, occurred_at=now)
            for p in payloads
        ]
        result = await self._store.append(
            AggregateKey("schedule", state.name),
            envelopes,
            state.version,
            idempotency_key=idempotency_key,
        )
        if result.all_duplicates:
            return await self._load(state.name)  # the same command's first append landed
        for envelope, sequence in zip(envelopes, result.sequences, strict=False):
            subject = self._store.streams.subject("schedule", state.name, envelope.type)
            self.apply(RecordedEvent(envelope, CONTEXT, sequence, subject))
        return self.schedules.get(state.name) or state

    # -- commands ------------------------------------------------------------------------

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            return await retry_on_conflict(attempt, what=what)
        except ConflictRetriesExhausted:
            raise CommandRefused(
                Refusal(code="unavailable", message="the schedule is changing; retry")
            ) from None
        except ScheduleNotFound as missing:
            raise CommandRefused(Refusal(code="not_found", message=str(missing))) from None
        except ScheduleExists as exists:
            raise CommandRefused(Refusal(code="conflict", message=str(exists))) from None

    @staticmethod
    def _known(name: str) -> str:
        if not _NAME.match(name):
            raise CommandRefused(Refusal(code="not_found", message=f"no schedule {name!r}"))
        return name

    async def create_schedule(self, command: CreateSchedule) -> dict[str, Any]:
        try:
            wanted = validate_create(command)
        except ScheduleInvalid as invalid:
            raise CommandRefused(
                Refusal(code="invalid", message=str(invalid), details=list(invalid.details))
            ) from None

        async def attempt() -> dict[str, Any]:
            state = await self._load(wanted.name)
            state = await self._append(
                state,
                decide_create(state, wanted),
                command.actor,
                trace=command.trace,
                idempotency_key=command.idempotency_key,
            )
            return answer(state, self._clock())

        result = await self._retrying(attempt, "create schedule")
        log.info("schedule.created", schedule=wanted.name, actor=str(command.actor))
        return result

    async def _change(
        self,
        command: Command,
        name: str,
        decide: Callable[[ScheduleState], list[EventPayload]],
        what: str,
    ) -> ScheduleState:
        self._known(name)

        async def attempt() -> ScheduleState:
            state = await self._load(name)
            return await self._append(
                state,
                decide(state),
                command.actor,
                trace=command.trace,
                idempotency_key=command.idempotency_key,
            )

        state = await self._retrying(attempt, what)
        log.info(f"schedule.{what.split()[0]}d", schedule=name, actor=str(command.actor))
        return state

    async def pause_schedule(self, command: PauseSchedule) -> dict[str, Any]:
        state = await self._change(
            command, command.schedule, lambda s: decide_pause(s, command.reason), "pause schedule"
        )
        return answer(state, self._clock())

    async def resume_schedule(self, command: ResumeSchedule) -> dict[str, Any]:
        state = await self._change(command, command.schedule, decide_resume, "resume schedule")
        return answer(state, self._clock())

    async def delete_schedule(self, command: DeleteSchedule) -> dict[str, Any]:
        await self._change(command, command.schedule, decide_delete, "delete schedule")
        return {"deleted": True, "name": command.schedule}

    async def list_schedules(self, command: ListSchedules) -> dict[str, Any]:
        await self._catch_up()
        now = self._clock()
        return {
            "schedules": [
                answer(self.schedules[name], now)
                for name in sorted(self.schedules)
                if self.schedules[name].exists
            ]
        }

    def handlers(self) -> list[tuple[type[Any], Any]]:
        """(command type, handler) pairs for the command bus."""
        return [
            (CreateSchedule, self.create_schedule),
            (PauseSchedule, self.pause_schedule),
            (ResumeSchedule, self.resume_schedule),
            (DeleteSchedule, self.delete_schedule),
            (ListSchedules, self.list_schedules),
        ]

    # -- the ticker ----------------------------------------------------------------------

    async def _running(self, run_id: str | None) -> bool:
        """Is this run still going (requested and not ended)? Its events are read from
        where the last look stopped; an ended run is remembered."""
        if run_id is None or run_id in self._ended:
            return False
        if len(self._run_versions) + len(self._ended) > RUNS_REMEMBERED:
            self._forget_runs()
        seen = self._run_versions.get(run_id, 0)
        events, version = await self._store.read_aggregate(AggregateKey("run", run_id), after=seen)
        self._run_versions[run_id] = version
        if any(event.type in RUN_ENDINGS for event in events):
            self._ended.add(run_id)
            self._run_versions.pop(run_id, None)
            return False
        return version > 0

    def _forget_runs(self) -> None:
        """Keep only the runs a schedule still looks at (its last one): the others were
        replaced (cancelled, ended) and are never asked about again."""
        current = {state.last_run_id for state in self.schedules.values()}
        self._run_versions = {r: v for r, v in self._run_versions.items() if r in current}
        self._ended &= current

    async def _start_run(
        self, state: ScheduleState, scheduled_at: datetime
    ) -> str | Refusal | None:
        """Send the tick's ``StartRun``: its run id, the executor's refusal, or None when
        no executor answered (the tick stays due; the next round sends it again)."""
        key = tick_key(state.name, scheduled_at)
        command = StartRun(
            actor=RUN_ACTOR,
            workflow=state.workflow,
            version=state.workflow_version,
            inputs=state.inputs,
            idempotency_key=key,
            trigger=TriggerRef(kind="schedule", id=tick_ref(state.name, scheduled_at)),
        )
        delay = 0.1
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                result = await self._bus.send(command, timeout=self._start_timeout)
            except CommandRefused as refused:
                if refused.refusal.code != "unavailable":
                    return refused.refusal
                error = refused.refusal.message
            except CommandUnavailable as unavailable:
                error = str(unavailable)
            else:
                run_id = str(result["run_id"])
                assert run_id == run_id_for(RUN_ACTOR.kind, RUN_ACTOR.id, key)
                return run_id
            log.warning(
                "schedule.start_unavailable", schedule=state.name, attempt=attempt, error=error
            )
            if attempt < START_ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 3
        return None

    async def _cancel(self, run_id: str, schedule: str) -> None:
        try:
            await self._bus.send(
                CancelRun(
                    actor=RUN_ACTOR,
                    run_id=run_id,
                    reason=f"schedule {schedule}: overlap cancel_other",
                ),
                timeout=self._start_timeout,
            )
        except (CommandRefused, CommandUnavailable) as error:
            # Ended meanwhile, or the executor is away: the new tick starts all the same.
            log.info("schedule.cancel_refused", schedule=schedule, run_id=run_id, error=str(error))

    async def _record(self, state: ScheduleState, payload: EventPayload) -> bool:
        """Record a tick's outcome after the schedule's version; False on a conflict
        (another replica recorded it, or the schedule changed: re-read, decide again)."""
        try:
            await self._append(state, [payload], self._actor)
        except ConcurrencyConflict:
            await self._load(state.name)
            return False
        return True

    async def _launch(self, state: ScheduleState, scheduled_at: datetime, catch_up: bool) -> bool:
        """Start the tick's run and record it fired (or refused). A run that started is
        always recorded fired (once: unless another replica recorded it fired first)."""
        buffered = state.buffered == scheduled_at
        outcome = await self._start_run(state, scheduled_at)
        if outcome is None:
            return False
        if isinstance(outcome, Refusal):
            detail = f"{outcome.code}: {outcome.message}"
            log.warning("schedule.tick_refused", schedule=state.name, detail=detail)
            payload: EventPayload = skipped(scheduled_at, "refused", detail)
        else:
            payload = fired(
                Tick(scheduled_at, scheduled_at, "fire", catch_up), self._clock(), outcome
            )
        for _ in range(RECORD_ATTEMPTS):
            if await self._record(state, payload):
                if not isinstance(outcome, Refusal):
                    log.info(
                        "schedule.fired",
                        schedule=state.name,
                        scheduled_at=scheduled_at.isoformat(),
                        run_id=outcome,
                        catch_up=catch_up,
                    )
                return True
            state = self.schedules[state.name]
            if scheduled_at in state.recent_fired:
                return False  # another replica started the same run and recorded it
            if isinstance(outcome, Refusal) and (
                state.buffered != scheduled_at
                if buffered
                else state.last_tick is not None and state.last_tick >= scheduled_at
            ):
                return False  # nothing started; what another replica recorded stands
            # Not recorded fired: the run this replica started is recorded all the same
            # (the schedule was paused meanwhile, or, in a race with the previous run
            # ending, another replica recorded the tick skipped), so overlap sees it.
        return False

    async def _fire(self, state: ScheduleState, tick: Tick) -> bool:
        previous = state.last_run_id
        running = state.overlap != "allow_all" and await self._running(previous)
        action = decide_overlap(state, running)
        if action == "skip":
            return await self._record(
                state, skipped(tick.scheduled_at, "overlap", f"run {previous} is still running")
            )
        if action == "buffer":
            return await self._record(
                state, skipped(tick.scheduled_at, "buffered", f"starts when run {previous} ends")
            )
        if action == "cancel_then_fire" and previous is not None:
            await self._cancel(previous, state.name)
        return await self._launch(state, tick.scheduled_at, tick.catch_up)

    async def advance(self, name: str) -> None:
        """Decide and act on everything due for one schedule now."""
        state = self.schedules[name]
        if not state.active:
            return
        if state.buffered is not None and not await self._running(state.last_run_id):
            state = await self._load(name)
            if state.active and state.buffered is not None:
                if not await self._launch(state, state.buffered, False):
                    return
        now = self._clock()
        if not due_ticks(self.schedules[name], now, limit=1):
            return
        # Something is due: read what other replicas recorded since the live fold last
        # brought it, so a tick one of them has handled is not decided again.
        state = await self._load(name)
        for tick in due_ticks(state, now):
            state = self.schedules[name]
            if not state.active:
                return
            if tick.action == "skip":
                done = await self._record(
                    state, skipped(tick.scheduled_at, "outside_catchup_window", tick.detail)
                )
            else:
                done = await self._fire(state, tick)
            if not done:
                return  # a conflict or no executor: the next round decides again

    async def round(self) -> None:
        """One look at every schedule."""
        for name in sorted(self.schedules):
            try:
                await self.advance(name)
            except EventStoreError as error:
                log.warning("schedule.round_failed", schedule=name, error=str(error))
                self._round_error = f"{name}: {error}"
                return
        self._round_error = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: a round every ``schedule_poll_seconds``. Stops the live
        fold when it ends."""
        stop = asyncio.create_task(stopping.wait())
        try:
            while not stopping.is_set():
                try:
                    await self.round()
                except Exception as error:  # noqa: BLE001 — keep ticking; the next round retries
                    log.exception("schedule.round_crashed")
                    self._round_error = f"{type(error).__name__}: {error}"
                await asyncio.wait({stop}, timeout=self._poll)
        finally:
            stop.cancel()
            if self._following is not None:
                self._following.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._following

    def healthy(self) -> tuple[bool, str | None]:
        if self._following is None or self._following.done():
            return False, "not following the schedules"
        if self._round_error is not None:
            return False, f"schedule round failed: {self._round_error}"
        return True, None
