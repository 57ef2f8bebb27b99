"""``run.llm.called`` across its schema versions: a version 1 or 2 event, stored before
its calls recorded what a budget held them by, loads as today's model with nothing
held; today's events carry their holds, bounded."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from chiffon.events import Actor, new_event
from chiffon.events.catalog import CATALOG
from chiffon.events.runs import BUDGET_HOLDS_MAX, LlmCalled

ACTOR = Actor.service("executor", 1)


def stored(version: int) -> str:
    current = new_event(
        LlmCalled(
            node_id="draft",
            attempt=1,
            provider="openai",
            model="gpt-4o-mini",
            prompt_tokens=10,
            completion_tokens=5,
            latency_ms=3.0,
            budget_holds=("lease:executor-1:00ff",),
        ),
        aggregate_id="run-1",
        actor=ACTOR,
    )
    document = json.loads(current.model_dump_json())
    document["schema_version"] = version
    document["payload"].pop("budget_holds")
    if version == 1:
        for field in ("cached_read_tokens", "cache_write_tokens", "reasoning_tokens"):
            document["payload"].pop(field)
        document["payload"].pop("budget_note")
    return json.dumps(document)


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_run_llm_called_loads_with_nothing_held(version: int) -> None:
    event = CATALOG.decode(stored(version))
    assert event.schema_version == LlmCalled.schema_version == 3
    assert isinstance(event.payload, LlmCalled)
    assert event.payload.budget_holds == ()
    assert (event.payload.prompt_tokens, event.payload.completion_tokens) == (10, 5)


def test_today_s_event_round_trips_its_holds() -> None:
    event = new_event(
        LlmCalled(
            node_id="draft",
            attempt=1,
            provider="openai",
            model="m",
            latency_ms=1.0,
            budget_holds=("lease:a:1", "lease:a:2"),
        ),
        aggregate_id="run-1",
        actor=ACTOR,
    )
    again = CATALOG.decode(event.model_dump_json())
    assert again.payload.budget_holds == ("lease:a:1", "lease:a:2")


def test_the_holds_are_bounded() -> None:
    with pytest.raises(ValidationError, match="budget_holds"):
        LlmCalled(
            node_id="n",
            attempt=1,
            provider="openai",
            model="m",
            latency_ms=1.0,
            budget_holds=tuple(f"r{n}" for n in range(BUDGET_HOLDS_MAX + 1)),
        )
    with pytest.raises(ValidationError, match="budget_holds"):
        LlmCalled(
            node_id="n",
            attempt=1,
            provider="openai",
            model="m",
            latency_ms=1.0,
            budget_holds=("x" * 201,),
        )
