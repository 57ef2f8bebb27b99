"""The schedule aggregate, pure: validation, the fold, next fire times across Berlin's
daylight-saving days, due ticks (on time, jittered, caught up, too old), overlap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chiffon.commands.triggers import CreateSchedule
from chiffon.events import Actor, EventPayload, new_event
from chiffon.events.triggers import (
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    SchedulePaused,
    ScheduleResumed,
    ScheduleTickSkipped,
)
from chiffon.trigger.schedule_domain import (
    ON_TIME_SECONDS,
    ScheduleExists,
    ScheduleInvalid,
    ScheduleNotFound,
    ScheduleState,
    answer,
    decide_create,
    decide_delete,
    decide_overlap,
    decide_pause,
    decide_resume,
    due_ticks,
    evolve,
    jitter_of,
    next_fire_times,
    tick_key,
    tick_ref,
    validate_create,
)

ADMIN = Actor(kind="api_key", id="admin", name="admin")
T0 = datetime(2026, 3, 2, 9, 0, 0, 500000, tzinfo=UTC)  # created half a second past 09:00


def at(hour: int, minute: int = 0, second: int = 0, day: int = 2, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def create(**fields: Any) -> CreateSchedule:
    return CreateSchedule(
        actor=ADMIN, **({"schedule": "nightly", "workflow": "triage", "cron": "* * * * *"} | fields)
    )


def fold(
    *payloads: EventPayload, created_at: datetime = T0, name: str = "nightly"
) -> ScheduleState:
    state = ScheduleState(name=name)
    for number, payload in enumerate(payloads, start=1):
        envelope = new_event(
            payload,
            aggregate_id=name,
            actor=ADMIN,
            occurred_at=created_at + timedelta(microseconds=number),
        )
        state = evolve(state, envelope, number)
    return state


def schedule(**fields: Any) -> ScheduleState:
    return fold(validate_create(create(**fields)))


# -- validation -------------------------------------------------------------------------------


def test_a_valid_create_becomes_the_event_with_the_cron_normalised() -> None:
    event = validate_create(
        create(cron="  0 9   * * MON-FRI ", timezone="Europe/Berlin", overlap="buffer_one")
    )
    assert event.cron == "0 9 * * MON-FRI"
    assert (event.timezone, event.overlap, event.catchup_window_seconds) == (
        "Europe/Berlin",
        "buffer_one",
        60,
    )


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"schedule": "Nightly Job"}, "schedule"),
        ({"schedule": "-x"}, "schedule"),
        ({"workflow": "no spaces"}, "workflow"),
        ({"version": 0}, "version"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "@daily"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "0 0 ? * *"}, "cron"),
        ({"cron": "* " * 60}, "cron"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"jitter_seconds": -1}, "jitter_seconds"),
        ({"jitter_seconds": 3601}, "jitter_seconds"),
        ({"overlap": "queue"}, "overlap"),
        ({"catchup_window_seconds": 7 * 86400 + 1}, "catchup_window_seconds"),
        ({"catchup_window_seconds": -5}, "catchup_window_seconds"),
    ],
)
def test_each_bad_field_is_named(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(ScheduleInvalid) as invalid:
        validate_create(create(**fields))
    assert [d["path"] for d in invalid.value.details] == [path]


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(ScheduleInvalid) as invalid:
        validate_create(create(cron="nope", timezone="Mars/Base", overlap="x", jitter_seconds=-1))
    assert [d["path"] for d in invalid.value.details] == [
        "cron",
        "timezone",
        "jitter_seconds",
        "overlap",
    ]


@pytest.mark.parametrize(
    "cron",
    ["0 0 L * *", "0 0 LW * *", "0 18 * * 5L", "0 9 * * 1#2", "0 9 * JAN,jul sun", "*/5 * * * * *"],
)
def test_cronsim_extensions_are_accepted(cron: str) -> None:
    assert validate_create(create(cron=cron)).cron == cron


# -- the fold and decisions ---------------------------------------------------------------------


def test_pause_resume_delete_and_create_again() -> None:
    created = validate_create(create())
    state = fold(created)
    assert state.active and state.since == T0 + timedelta(microseconds=1)
    with pytest.raises(ScheduleExists):
        decide_create(state, created)
    assert decide_resume(state) == []
    [paused] = decide_pause(state, "maintenance")
    state = fold(created, paused)
    assert state.paused and not state.active
    assert decide_pause(state, None) == []
    [resumed] = decide_resume(state)
    state = fold(created, paused, resumed)
    assert state.active and state.since == T0 + timedelta(microseconds=3)
    [deleted] = decide_delete(state)
    state = fold(created, paused, resumed, deleted)
    assert not state.exists
    for decide in (lambda s: decide_pause(s, None), decide_resume, decide_delete):
        with pytest.raises(ScheduleNotFound):
            decide(state)
    assert decide_create(state, created) == [created]  # a deleted schedule's name is free


def test_fired_and_skipped_ticks_move_the_last_tick_and_the_buffer() -> None:
    created = validate_create(create(overlap="buffer_one"))
    buffered = ScheduleTickSkipped(scheduled_at=at(9, 2), reason="buffered")
    state = fold(created, buffered)
    assert state.buffered == at(9, 2) and state.last_tick == at(9, 2)
    late = ScheduleFired(scheduled_at=at(9, 2), fired_at=at(9, 4), run_id="r2")
    overlap = ScheduleTickSkipped(scheduled_at=at(9, 3), reason="overlap")
    state = fold(created, buffered, overlap, late)
    assert state.buffered is None
    assert state.last_tick == at(9, 3)  # the buffered tick fired later does not move it back
    assert (state.last_run_id, state.last_scheduled_at, state.last_fired_at) == (
        "r2",
        at(9, 2),
        at(9, 4),
    )
    assert fold(created, buffered, SchedulePaused()).buffered is None


def test_an_event_already_folded_changes_nothing() -> None:
    state = schedule()
    envelope = new_event(ScheduleDeleted(), aggregate_id="nightly", actor=ADMIN)
    assert evolve(state, envelope, 1) is state


def test_the_tick_key_and_ref_name_the_schedule_and_the_utc_second() -> None:
    berlin = at(8, 30).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert tick_key("nightly", berlin) == "tick:nightly:2026-03-02T08:30:00Z"
    assert tick_ref("nightly", berlin) == "nightly@2026-03-02T08:30:00Z"


def test_the_answer_lists_the_next_five_fire_times_none_when_paused() -> None:
    state = schedule(cron="0 9 * * *", timezone="Europe/Berlin")
    shown = answer(state, at(12))
    assert shown["next_fire_times"] == [f"2026-03-0{d}T08:00:00Z" for d in range(3, 8)]
    assert shown["paused"] is False and shown["last_run_id"] is None
    paused = fold(validate_create(create(cron="0 9 * * *")), SchedulePaused())
    assert answer(paused, at(12))["next_fire_times"] == []


# -- daylight saving time in Europe/Berlin -----------------------------------------------------


def test_a_0230_berlin_schedule_on_the_spring_forward_day_fires_at_0300_cest() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST, 02:30 does not exist.
    state = schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    times = next_fire_times(state, at(12, day=27), 4)
    assert times == [
        at(1, 30, day=28),  # 02:30 CET
        at(1, 0, day=29),  # 03:00 CEST: the first minute after the gap
        at(0, 30, day=30),  # 02:30 CEST
        at(0, 30, day=31),
    ]


def test_a_0230_berlin_schedule_on_the_fall_back_day_fires_once_at_the_first_0230() -> None:
    # 2026-10-25: 03:00 CEST goes back to 02:00 CET, 02:30 happens twice.
    state = schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    times = next_fire_times(state, at(12, day=23, month=10), 4)
    assert times == [
        at(0, 30, day=24, month=10),  # 02:30 CEST
        at(0, 30, day=25, month=10),  # 02:30 CEST, the first one; not 02:30 CET (01:30 UTC)
        at(1, 30, day=26, month=10),  # 02:30 CET
        at(1, 30, day=27, month=10),
    ]
    # Asked from inside the repeated hour (02:15 CET, after the tick): the next is tomorrow.
    assert next_fire_times(state, at(1, 15, day=25, month=10), 1) == [at(1, 30, day=26, month=10)]


def test_an_hourly_schedule_follows_real_instants_across_both_days() -> None:
    state = schedule(cron="30 * * * *", timezone="Europe/Berlin")
    spring = next_fire_times(state, at(23, 45, day=28), 3)
    assert spring == [at(0, 30, day=29), at(1, 30, day=29), at(2, 30, day=29)]  # no 02:30
    autumn = next_fire_times(state, at(22, 45, day=24, month=10), 3)
    # 01:30 CEST, 02:30 CEST, 02:30 CET: both 02:30s.
    assert autumn == [
        at(23, 30, day=24, month=10),
        at(0, 30, day=25, month=10),
        at(1, 30, day=25, month=10),
    ]


def test_due_ticks_on_the_dst_days_fire_once_each() -> None:
    created = validate_create(create(cron="30 2 * * *", timezone="Europe/Berlin"))
    state = fold(created, created_at=at(12, day=24, month=10))
    [tick] = due_ticks(state, at(0, 30, 1, day=25, month=10))
    assert (tick.scheduled_at, tick.action, tick.catch_up) == (
        at(0, 30, day=25, month=10),
        "fire",
        False,
    )
    state = fold(
        created,
        ScheduleFired(scheduled_at=tick.scheduled_at, fired_at=at(0, 30, 1), run_id="r"),
        created_at=at(12, day=24, month=10),
    )
    assert due_ticks(state, at(1, 30, 1, day=25, month=10)) == []  # 02:30 CET: not again


# -- due ticks ---------------------------------------------------------------------------------


def test_the_first_tick_is_the_first_after_creation_and_on_time_within_the_grace() -> None:
    state = schedule(cron="* * * * * *")  # every second, created at 09:00:00.5
    assert due_ticks(state, T0) == []
    [first] = due_ticks(state, at(9, 0, 1) + timedelta(milliseconds=200))
    assert (first.scheduled_at, first.action, first.catch_up) == (at(9, 0, 1), "fire", False)
    ticks = due_ticks(state, at(9, 0, 5))
    assert [t.scheduled_at.second for t in ticks] == [1, 2, 3, 4, 5]
    assert [t.catch_up for t in ticks] == [True, False, False, False, False]
    assert ON_TIME_SECONDS == 3.0


def test_ticks_after_the_last_recorded_one_only() -> None:
    created = validate_create(create(cron="* * * * * *"))
    state = fold(created, ScheduleTickSkipped(scheduled_at=at(9, 0, 3), reason="overlap"))
    assert [t.scheduled_at.second for t in due_ticks(state, at(9, 0, 5))] == [4, 5]
    assert [t.scheduled_at.second for t in due_ticks(state, at(9, 0, 5), at(9, 0, 4))] == [5]


def test_catch_up_fires_ticks_within_the_window_and_skips_older_ones() -> None:
    created = validate_create(create(cron="*/10 * * * * *", catchup_window_seconds=30))
    state = fold(
        created, ScheduleFired(scheduled_at=at(9, 0, 10), fired_at=at(9, 0, 10), run_id="r")
    )
    # Down from 09:00:11 to 09:02:00: ticks every 10 s missed.
    ticks = due_ticks(state, at(9, 2, 0))
    [(oldest, reason)] = [(t.scheduled_at, t.detail) for t in ticks if t.action == "skip"]
    assert oldest == at(9, 1, 20)  # the newest of those older than 30 s stands for all
    assert reason is not None and "after 2026-03-02T09:00:10Z" in reason
    fired = [t for t in ticks if t.action == "fire"]
    assert [(t.scheduled_at, t.catch_up) for t in fired] == [
        (at(9, 1, 30), True),
        (at(9, 1, 40), True),
        (at(9, 1, 50), True),
        (at(9, 2, 0), False),
    ]


def test_a_week_down_costs_one_skipped_record() -> None:
    state = schedule(cron="* * * * * *", catchup_window_seconds=0)
    ticks = due_ticks(state, T0 + timedelta(days=7))
    assert [t.action for t in ticks] == ["skip", "fire", "fire", "fire"]
    assert ticks[0].scheduled_at == T0 + timedelta(days=7) - timedelta(seconds=3.5)


def test_a_round_decides_at_most_the_limit() -> None:
    state = schedule(cron="* * * * * *", catchup_window_seconds=3600)
    ticks = due_ticks(state, at(9, 30), limit=100)
    assert len(ticks) == 100 and all(t.action == "fire" and t.catch_up for t in ticks)


def test_paused_deleted_and_ticks_while_paused_never_fire() -> None:
    created = validate_create(create(cron="* * * * * *"))
    assert due_ticks(fold(created, SchedulePaused()), at(9, 0, 5)) == []
    assert due_ticks(fold(created, ScheduleDeleted()), at(9, 0, 5)) == []
    resumed = fold(created, SchedulePaused(), ScheduleResumed(), created_at=at(9, 0, 0))
    # resumed at 09:00:00.000003: 09:00:00 itself, though missed while paused, does not fire
    assert [t.scheduled_at.second for t in due_ticks(resumed, at(9, 0, 2))] == [1, 2]


def test_jitter_is_deterministic_bounded_and_keeps_ticks_in_order() -> None:
    offsets = {jitter_of("nightly", at(9, m), 30) for m in range(60)}
    assert offsets <= set(range(31)) and len(offsets) > 10
    assert jitter_of("nightly", at(9, 7), 30) == jitter_of("nightly", at(9, 7), 30)
    assert jitter_of("nightly", at(9, 7), 0) == 0
    state = schedule(cron="* * * * *", jitter_seconds=30)
    first = at(9, 1)
    delay = jitter_of("nightly", first, 30)
    assert due_ticks(state, first + timedelta(seconds=delay) - timedelta(milliseconds=1)) == []
    [tick] = due_ticks(state, first + timedelta(seconds=delay))
    assert tick.due_at == first + timedelta(seconds=delay) and not tick.catch_up


# -- overlap -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "buffered", "running", "action"),
    [
        ("skip", None, False, "fire"),
        ("skip", None, True, "skip"),
        ("buffer_one", None, True, "buffer"),
        ("buffer_one", at(9), True, "skip"),
        ("allow_all", None, True, "fire"),
        ("cancel_other", None, True, "cancel_then_fire"),
        ("cancel_other", None, False, "fire"),
    ],
)
def test_overlap_policies(
    policy: str, buffered: datetime | None, running: bool, action: str
) -> None:
    state = schedule(overlap=policy)
    if buffered is not None:
        state = fold(
            validate_create(create(overlap=policy)),
            ScheduleTickSkipped(scheduled_at=buffered, reason="buffered"),
        )
    assert decide_overlap(state, running) == action


def test_created_event_round_trips_its_fields() -> None:
    event = ScheduleCreated(name="x", workflow="w", cron="* * * * *")
    assert fold(event, name="x").cron == "* * * * *"


# -- property: whenever the rounds happen, every tick is decided once --------------------------


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.05, max_value=30.0), min_size=1, max_size=15),
    window=st.integers(min_value=0, max_value=20),
    jitter=st.integers(min_value=0, max_value=5),
    cron=st.sampled_from(["* * * * * *", "*/7 * * * * *", "0,15,16 * * * * *"]),
)
def test_every_tick_is_decided_once_in_order_whenever_rounds_run(
    gaps: list[float], window: int, jitter: int, cron: str
) -> None:
    created = validate_create(
        create(cron=cron, catchup_window_seconds=window, jitter_seconds=jitter)
    )
    state = fold(created)
    recorded: list[EventPayload] = []
    now = T0
    for gap in gaps:
        now += timedelta(seconds=gap)
        for tick in due_ticks(state, now):
            assert tick.due_at <= now
            payload: EventPayload
            if tick.action == "fire":
                late = (now - tick.due_at).total_seconds()
                assert late <= max(window, ON_TIME_SECONDS)
                assert tick.catch_up == (late > ON_TIME_SECONDS)
                payload = ScheduleFired(
                    scheduled_at=tick.scheduled_at,
                    fired_at=now,
                    run_id="r",
                    catch_up=tick.catch_up,
                )
            else:
                payload = ScheduleTickSkipped(
                    scheduled_at=tick.scheduled_at, reason="outside_catchup_window"
                )
            recorded.append(payload)
            envelope = new_event(payload, aggregate_id="nightly", actor=ADMIN, occurred_at=now)
            state = evolve(state, envelope, state.version + 1)
    times = [p.scheduled_at for p in recorded]  # type: ignore[attr-defined]
    assert times == sorted(set(times))  # in order, none twice
    # No tick lost: one not recorded is one a skip record after it stands for (the
    # next record after it is that skip).
    seen = set(times)
    standing = {p.scheduled_at for p in recorded if isinstance(p, ScheduleTickSkipped)}
    everything = next_fire_times(state, T0, 1100) if times else []
    for missing in (t for t in everything if t < times[-1] and t not in seen):
        following = next(t for t in times if t > missing)
        assert following in standing
