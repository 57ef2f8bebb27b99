"""The replay compares decisions as objects first and as canonical JSON only when the
objects differ: a step matches another exactly when their canonical JSON texts are
equal, whatever the values (``1`` against ``1.0`` or ``True``, ``0.0`` against ``-0.0``,
NaN, lists against tuples, non-string keys, objects JSON does not know). The replay's
envelopes, made without pydantic's ``model_construct``, are the ones it makes."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chiffon.events import Actor, Envelope, uuid7
from chiffon.events.runs import NodeCompleted, NodeStarted
from chiffon.executor.replay.capture import construct
from chiffon.executor.replay.normalize import Step, _canonical, same_json, steps

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan, math.inf]),
    st.sampled_from(["", "a", "é", "1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["a", "b", "1"]), inner, max_size=3),
        st.dictionaries(st.sampled_from([1, 2]), inner, max_size=2),  # mixed keys: JSON refuses
    ),
    max_leaves=8,
)


def twin(value: Any, data: st.DataObject) -> Any:
    """A value like ``value``, some of its parts swapped for ones equal in Python."""
    if isinstance(value, dict):
        return {k: twin(v, data) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [twin(v, data) for v in value]
        kind = data.draw(st.sampled_from([list, tuple, type(value)]))
        return kind(items)
    if type(value) in (bool, int, float) and not (isinstance(value, float) and math.isnan(value)):
        swaps = [value, float(value)] if not math.isinf(value) else [value]
        if value in (0, 1) and not (isinstance(value, float) and math.copysign(1, value) < 0):
            swaps += [bool(value), int(value), -0.0 if value == 0 else 1]
        return data.draw(st.sampled_from(swaps))
    return value


@given(VALUES, st.data())
def test_objects_match_exactly_when_their_canonical_json_is_equal(
    value: Any, data: st.DataObject
) -> None:
    other = twin(value, data)
    recorded = Step("run.node.completed", "n", None, 3, decided={"outputs": value})
    replayed = Step("run.node.completed", "n", decided={"outputs": other})
    equal_text = _canonical({"outputs": value}) == _canonical({"outputs": other})
    assert recorded.matches(replayed) is equal_text
    assert replayed.matches(recorded) is equal_text
    if same_json(value, other):
        assert equal_text


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (1, 1.0),
        (1, True),
        (0.0, -0.0),
        ([1], (1,)),
        ({1: "a"}, {"1": "a"}),
        ({True: "a"}, {1: "a"}),
        (Decimal(1), 1),
        (math.nan, math.nan),
    ],
)
def test_what_python_finds_equal_but_json_may_not_is_left_to_the_json(
    first: Any, second: Any
) -> None:
    assert not same_json(first, second)
    made = Step("t", "n", decided=first), Step("t", "n", decided=second)
    assert made[0].matches(made[1]) is (_canonical(first) == _canonical(second))


def test_a_step_reads_as_before() -> None:
    completed = NodeCompleted(
        node_id="n", attempt=1, iteration=2, outputs={"b": 1, "a": "é"}, duration_ms=1.0
    )
    envelope = Envelope[NodeCompleted].model_construct(payload=completed)
    [step] = steps([(envelope, 7)])
    assert step.detail == '{"attempt": 1, "iteration": 2, "outputs": {"a": "é", "b": 1}}'
    assert step == Step("run.node.completed", "n", step.detail, 7)
    assert step.key() == ("run.node.completed", "n", step.detail)
    assert "(stream sequence 7)" in step.describe()
    assert not step.matches(Step("run.node.completed", "other", step.detail))
    with pytest.raises(TypeError):
        Step("t", "n")


def test_the_replay_makes_envelopes_as_pydantic_does() -> None:
    values: dict[str, Any] = {
        "event_id": uuid7(),
        "type": NodeStarted.event_type,
        "schema_version": NodeStarted.schema_version,
        "aggregate": NodeStarted.aggregate,
        "aggregate_id": "r1",
        "occurred_at": datetime.now(UTC),
        "correlation_id": "r1",
        "causation_id": None,
        "actor": Actor.service("replay"),
        "trace": None,
        "payload": NodeStarted(node_id="n", node_type="set", attempt=1, iteration=1),
    }
    kind = Envelope[NodeStarted]
    made, theirs = construct(kind, dict(values)), kind.model_construct(**values)
    assert made == theirs and made.model_fields_set == theirs.model_fields_set
    assert kind.model_validate_json(made.model_dump_json()) == theirs
    # Not every field given: pydantic's own construction fills the defaults.
    del values["trace"]
    assert construct(kind, dict(values)).trace is None
