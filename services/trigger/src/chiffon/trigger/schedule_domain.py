"""Cron schedules, pure: the ``schedule`` aggregate folded from its events, the
create/pause/resume/delete decisions (with every bad field named), the next fire
times in the schedule's time zone, and which ticks are due at an instant (on time,
caught up after downtime, or too old and skipped). No I/O: the clock is a parameter.

Cron expressions are parsed by ``cronsim`` (2.x). Five fields (minute hour
day-of-month month day-of-week), or six with a leading seconds field. ``cronsim``
also accepts: month and weekday names (``JAN``..``DEC``, ``SUN``..``SAT``, any case),
``7`` for Sunday, ranges, steps and lists (``1-5``, ``*/15``, ``0,30``), ``L`` (last
day of the month) and ``LW`` (its last weekday) in the day-of-month field, ``5L``
(the month's last Friday) and ``1#2`` (its second Monday) in the day-of-week field.
It does not accept ``@daily``-style macros, ``?``, ``W`` other than ``LW``, or ``H``.
As in Debian cron, when both day fields are restricted (neither starts with ``*``) a
day matching either fires.

Daylight saving time (``cronsim``'s rules, pinned by the unit tests): a five-field
expression with a fixed minute and hour (``30 2 * * *``) follows Debian cron: a time
that does not exist that day (Europe/Berlin's spring-forward day, 02:00 → 03:00) fires
at the first minute after the gap, 03:00 CEST (01:00 UTC); a time that happens twice
(the fall-back day, 03:00 → 02:00) fires once, at the first occurrence, 02:30 CEST
(00:30 UTC). Any other expression (``*`` or a step in the minute or hour field, or a
seconds field) follows real instants: a time in the gap does not fire that day, a
time in the repeated hour fires twice (``30 * * * *`` fires at 02:30 CEST and 02:30
CET on the fall-back day).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from chiffon.commands.triggers import CreateSchedule
from chiffon.events import Envelope, EventPayload
from chiffon.events.limits import WORKFLOW_NAME_PATTERN, WORKFLOW_VERSION_MAX
from chiffon.events.triggers import (
    CRON_MAX_CHARS,
    OVERLAP_POLICIES,
    TRIGGER_NAME_PATTERN,
    OverlapPolicy,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    SchedulePaused,
    ScheduleResumed,
    ScheduleTickSkipped,
)

ON_TIME_SECONDS = 3.0
"""A tick fired up to this long after its time (a poll interval, a busy machine) is on
time; later, it is a catch-up tick (``catch_up: true``), fired only within the
schedule's catch-up window (or this grace, whichever is longer)."""
MAX_TICKS_PER_ROUND = 100
"""Ticks one round decides at most (an every-second schedule down for a day has 86,400
in its window): the rest are decided by the next rounds."""
NEXT_FIRE_TIMES = 5
RECENT_FIRED = 64
MAX_JITTER_SECONDS = 3600
MAX_CATCHUP_WINDOW_SECONDS = 7 * 86400
_NAME = re.compile(TRIGGER_NAME_PATTERN)
_WORKFLOW = re.compile(WORKFLOW_NAME_PATTERN)


class ScheduleInvalid(Exception):
    """The command is not a schedule: ``details`` names each bad field."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{d['path']}: {d['message']}" for d in details))
        self.details = details


class ScheduleNotFound(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule {name!r}")
        self.name = name


class ScheduleExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"a schedule named {name!r} exists already")
        self.name = name


# -- the aggregate ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as its events leave it. ``version`` is the aggregate's version (the
    stream sequence of its last event), what the next append expects."""

    name: str
    version: int = 0
    exists: bool = False  # created and not deleted
    workflow: str = ""
    workflow_version: int | None = None
    cron: str = ""
    timezone: str = "UTC"
    inputs: dict[str, Any] = field(default_factory=dict)
    jitter_seconds: int = 0
    overlap: OverlapPolicy = "skip"
    catchup_window_seconds: int = 60
    paused: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    since: datetime | None = None
    """Ticks after this instant count: created, or resumed (ticks while paused never fire)."""
    last_tick: datetime | None = None
    """The newest tick recorded (fired, skipped or buffered): ticks up to it are decided."""
    last_fired_at: datetime | None = None
    last_scheduled_at: datetime | None = None
    last_run_id: str | None = None
    buffered: datetime | None = None
    """``buffer_one``: the tick held until the running run ends (at most one)."""
    recent_fired: tuple[datetime, ...] = ()
    """The newest fired ticks (at most ``RECENT_FIRED``): was this tick's run recorded?"""

    @property
    def active(self) -> bool:
        """Does it fire (exists, not paused)?"""
        return self.exists and not self.paused


def evolve(state: ScheduleState, envelope: Envelope[Any], sequence: int) -> ScheduleState:
    """``state`` with one more of its events folded in (an event at or below its version
    is one it has: unchanged)."""
    if sequence <= state.version:
        return state
    payload = envelope.payload
    at = envelope.occurred_at
    state = replace(state, version=sequence)
    if isinstance(payload, ScheduleCreated):
        return ScheduleState(
            name=state.name,
            version=sequence,
            exists=True,
            workflow=payload.workflow,
            workflow_version=payload.version,
            cron=payload.cron,
            timezone=payload.timezone,
            inputs=dict(payload.inputs),
            jitter_seconds=payload.jitter_seconds,
            overlap=payload.overlap,
            catchup_window_seconds=payload.catchup_window_seconds,
            created_at=at,
            updated_at=at,
            since=at,
        )
    if isinstance(payload, SchedulePaused):
        return replace(state, paused=True, buffered=None, updated_at=at)
    if isinstance(payload, ScheduleResumed):
        return replace(state, paused=False, since=at, updated_at=at)
    if isinstance(payload, ScheduleDeleted):
        return replace(state, exists=False, paused=False, buffered=None, updated_at=at)
    if isinstance(payload, ScheduleFired):
        return replace(
            state,
            last_tick=_latest(state.last_tick, payload.scheduled_at),
            last_fired_at=payload.fired_at,
            last_scheduled_at=payload.scheduled_at,
            last_run_id=payload.run_id,
            buffered=None if state.buffered == payload.scheduled_at else state.buffered,
            recent_fired=(*state.recent_fired, payload.scheduled_at)[-RECENT_FIRED:],
        )
    if isinstance(payload, ScheduleTickSkipped):
        return replace(
            state,
            last_tick=_latest(state.last_tick, payload.scheduled_at),
            buffered=payload.scheduled_at if payload.reason == "buffered" else state.buffered,
        )
    return state


def _latest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


# -- validation and decisions ----------------------------------------------------------------


def zone_of(name: str) -> ZoneInfo | None:
    """The IANA time zone, or None when there is no such zone."""
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a cron expression this service runs, or None."""
    if len(expression) > CRON_MAX_CHARS:
        return f"longer than {CRON_MAX_CHARS} characters"
    fields = expression.split()
    if len(fields) not in (5, 6):
        return (
            f"{len(fields)} fields: a cron expression has 5 (minute hour day-of-month month "
            "day-of-week), or 6 with a leading seconds field"
        )
    try:
        next(CronSim(expression, datetime(2026, 1, 1, tzinfo=UTC)))
    except CronSimError as error:
        return f"{error} field"
    except StopIteration:
        return "it never fires"
    return None


def validate_create(command: CreateSchedule) -> ScheduleCreated:
    """The ``schedule.created`` the command asks for, or ``ScheduleInvalid`` listing
    every bad field."""
    details: list[dict[str, str]] = []

    def bad(path: str, message: str) -> None:
        details.append({"path": path, "message": message})

    if not _NAME.match(command.schedule):
        bad(
            "schedule",
            f"{command.schedule!r} is not a schedule name (lowercase letters, digits, '-' "
            "and '_', starting with a letter or digit, at most 63)",
        )
    if not _WORKFLOW.match(command.workflow):
        bad("workflow", f"{command.workflow!r} is not a workflow name")
    if command.version is not None and not 1 <= command.version <= WORKFLOW_VERSION_MAX:
        bad("version", f"{command.version} is not a workflow version (1..{WORKFLOW_VERSION_MAX})")
    problem = cron_problem(command.cron)
    if problem is not None:
        bad("cron", f"{command.cron!r}: {problem}")
    if zone_of(command.timezone) is None:
        bad(
            "timezone",
            f"unknown time zone {command.timezone!r} (an IANA name such as Europe/Berlin)",
        )
    if not 0 <= command.jitter_seconds <= MAX_JITTER_SECONDS:
        bad("jitter_seconds", f"{command.jitter_seconds} is not within 0..{MAX_JITTER_SECONDS}")
    if command.overlap not in OVERLAP_POLICIES:
        bad(
            "overlap",
            f"unknown overlap policy {command.overlap!r}: one of {', '.join(OVERLAP_POLICIES)}",
        )
    if not 0 <= command.catchup_window_seconds <= MAX_CATCHUP_WINDOW_SECONDS:
        bad(
            "catchup_window_seconds",
            f"{command.catchup_window_seconds} is not within 0..{MAX_CATCHUP_WINDOW_SECONDS} "
            "(7 days)",
        )
    if details:
        raise ScheduleInvalid(details)
    return ScheduleCreated(
        name=command.schedule,
        workflow=command.workflow,
        version=command.version,
        cron=" ".join(command.cron.split()),
        timezone=command.timezone,
        inputs=dict(command.inputs),
        jitter_seconds=command.jitter_seconds,
        overlap=cast(OverlapPolicy, command.overlap),
        catchup_window_seconds=command.catchup_window_seconds,
    )


def decide_create(state: ScheduleState, wanted: ScheduleCreated) -> list[EventPayload]:
    """Create it; ``ScheduleExists`` when the name is taken (a deleted one's name is free)."""
    if state.exists:
        raise ScheduleExists(state.name)
    return [wanted]


def _existing(state: ScheduleState) -> ScheduleState:
    if not state.exists:
        raise ScheduleNotFound(state.name)
    return state


def decide_pause(state: ScheduleState, reason: str | None) -> list[EventPayload]:
    """Pause it (nothing when it is paused already)."""
    return [] if _existing(state).paused else [SchedulePaused(reason=reason)]


def decide_resume(state: ScheduleState) -> list[EventPayload]:
    """Resume it (nothing when it is not paused): ticks from now on fire, none of those
    that fell while it was paused."""
    return [ScheduleResumed()] if _existing(state).paused else []


def decide_delete(state: ScheduleState) -> list[EventPayload]:
    _existing(state)
    return [ScheduleDeleted()]


# -- time ------------------------------------------------------------------------------------


def _ticks(state: ScheduleState, after: datetime) -> Iterator[datetime]:
    """The schedule's ticks strictly after ``after``, in UTC, in order. (``cronsim``
    works on the wall clock for a fixed-time expression: from inside a repeated hour it
    may give a tick before ``after``; those are dropped.)"""
    zone = zone_of(state.timezone) or ZoneInfo("UTC")
    for tick in CronSim(state.cron, after.astimezone(zone)):
        instant = tick.astimezone(UTC)
        if instant > after:
            yield instant


def _tick_before(state: ScheduleState, before: datetime) -> datetime | None:
    """The schedule's last tick strictly before ``before``, in UTC (None within 50 years)."""
    zone = zone_of(state.timezone) or ZoneInfo("UTC")
    try:
        for tick in CronSim(state.cron, before.astimezone(zone), reverse=True):
            instant = tick.astimezone(UTC)
            if instant < before:
                return instant
    except StopIteration:  # pragma: no cover — cronsim gives up after 50 years
        return None
    return None


def next_fire_times(
    state: ScheduleState, after: datetime, n: int = NEXT_FIRE_TIMES
) -> list[datetime]:
    """The next ``n`` scheduled times after ``after`` (UTC; jitter not added), none
    when the schedule is paused or deleted."""
    if not state.active:
        return []
    times: list[datetime] = []
    for tick in _ticks(state, after):
        times.append(tick)
        if len(times) >= n:
            break
    return times


def iso(at: datetime) -> str:
    """A tick's time as its key writes it: UTC, whole seconds, ``Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_key(schedule: str, scheduled_at: datetime) -> str:
    """The idempotency key of the tick's run (``tick:<schedule>:<UTC ISO>``): the same on
    every replica and after a restart, so the tick starts one run."""
    return f"tick:{schedule}:{iso(scheduled_at)}"


def tick_ref(schedule: str, scheduled_at: datetime) -> str:
    """The tick as the run's trigger names it: ``<schedule>@<UTC ISO>``."""
    return f"{schedule}@{iso(scheduled_at)}"


def jitter_of(schedule: str, scheduled_at: datetime, jitter_seconds: int) -> int:
    """Seconds the tick is delayed by: 0..``jitter_seconds``, from a digest of the
    schedule and the tick, so every replica (and a restarted one) delays it alike."""
    if jitter_seconds <= 0:
        return 0
    digest = hashlib.sha256(f"{schedule}\x00{iso(scheduled_at)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (jitter_seconds + 1)


TickAction = Literal["fire", "skip"]


@dataclass(frozen=True, slots=True)
class Tick:
    """A due tick and what to do with it: ``fire`` (``catch_up`` when it is late by
    more than ``ON_TIME_SECONDS``), or ``skip`` it as outside the catch-up window."""

    scheduled_at: datetime
    due_at: datetime  # scheduled_at + its jitter
    action: TickAction
    catch_up: bool = False
    detail: str | None = None


def due_ticks(
    state: ScheduleState,
    now: datetime,
    last_fired: datetime | None = None,
    *,
    limit: int = MAX_TICKS_PER_ROUND,
) -> list[Tick]:
    """The ticks due at ``now`` not decided yet (after ``last_fired``, the newest tick
    recorded, by default the state's own; and after the schedule was created or
    resumed), oldest first, at most ``limit``.

    A tick is due at its time plus its jitter; ticks go in order (one whose jitter
    has not passed holds the later ones back). Late by at most ``ON_TIME_SECONDS``: fired
    on time. Later but within the catch-up window: fired, ``catch_up``. Older: skipped
    (``outside_catchup_window``); when many were missed (the service was down), only the
    newest of those is listed, its ``detail`` saying since when ticks were missed."""
    if not state.active or state.since is None:
        return []
    anchor = state.since
    last = last_fired if last_fired is not None else state.last_tick
    if last is not None and last > anchor:
        anchor = last
    late_limit = timedelta(seconds=max(float(state.catchup_window_seconds), ON_TIME_SECONDS))
    on_time = timedelta(seconds=ON_TIME_SECONDS)
    ticks: list[Tick] = []
    # Every tick before the cutoff is outside the window whatever its jitter: the newest
    # stands for all of them, so a week down costs one record, not 600,000.
    cutoff = now - late_limit - timedelta(seconds=state.jitter_seconds)
    if anchor < cutoff:
        missed = _tick_before(state, cutoff)
        if missed is not None and missed > anchor:
            ticks.append(
                Tick(
                    missed,
                    missed + timedelta(seconds=jitter_of(state.name, missed, state.jitter_seconds)),
                    "skip",
                    detail=f"missed, with every tick after {iso(anchor)}, while no trigger "
                    f"replica ran; older than the catch-up window "
                    f"({state.catchup_window_seconds} s)",
                )
            )
            anchor = missed
    for scheduled in _ticks(state, anchor):
        if len(ticks) >= limit:
            break
        due = scheduled + timedelta(seconds=jitter_of(state.name, scheduled, state.jitter_seconds))
        if due > now:
            break
        late = now - due
        if late > late_limit:
            ticks.append(
                Tick(
                    scheduled,
                    due,
                    "skip",
                    detail=f"older than the catch-up window ({state.catchup_window_seconds} s)",
                )
            )
        else:
            ticks.append(Tick(scheduled, due, "fire", catch_up=late > on_time))
    return ticks


OverlapAction = Literal["fire", "skip", "buffer", "cancel_then_fire"]


def decide_overlap(state: ScheduleState, previous_running: bool) -> OverlapAction:
    """What a tick to fire does given the schedule's previous run: fire when it is not
    running (or ``allow_all``); else ``skip``; ``buffer`` it (``buffer_one``, when no tick
    is buffered yet; a second is skipped); or cancel the running one, then fire."""
    if not previous_running or state.overlap == "allow_all":
        return "fire"
    if state.overlap == "cancel_other":
        return "cancel_then_fire"
    if state.overlap == "buffer_one" and state.buffered is None:
        return "buffer"
    return "skip"


def fired(tick: Tick, now: datetime, run_id: str) -> ScheduleFired:
    return ScheduleFired(
        scheduled_at=tick.scheduled_at, fired_at=now, run_id=run_id, catch_up=tick.catch_up
    )


def skipped(
    scheduled_at: datetime,
    reason: Literal["overlap", "outside_catchup_window", "buffered", "refused"],
    detail: str | None = None,
) -> ScheduleTickSkipped:
    return ScheduleTickSkipped(
        scheduled_at=scheduled_at, reason=reason, detail=detail[:1000] if detail else None
    )


# -- the answer ------------------------------------------------------------------------------


def _iso_or_none(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z") if at else None


def answer(state: ScheduleState, now: datetime) -> dict[str, Any]:
    """The schedule as every command and the listing answer it."""
    return {
        "name": state.name,
        "workflow": state.workflow,
        "version": state.workflow_version,
        "cron": state.cron,
        "timezone": state.timezone,
        "inputs": state.inputs,
        "jitter_seconds": state.jitter_seconds,
        "overlap": state.overlap,
        "catchup_window_seconds": state.catchup_window_seconds,
        "paused": state.paused,
        "next_fire_times": [iso(t) for t in next_fire_times(state, now)],
        "last_fired_at": _iso_or_none(state.last_fired_at),
        "last_run_id": state.last_run_id,
        "created_at": _iso_or_none(state.created_at),
        "updated_at": _iso_or_none(state.updated_at),
    }
