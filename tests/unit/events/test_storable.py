"""``make_storable``: what the executor records never holds a NUL or a lone surrogate."""

from __future__ import annotations

import json
import timeit
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chiffon.events.storable import MAX_NOTED_PATHS, find_unstorable, make_storable

OUTPUT = {
    "answer": "Paris is the capital of France. " * 10,
    "score": 7,
    "facts": ["a", "b", "c"],
    "ok": True,
    "nested": {"k": "café"},
}


def test_a_storable_value_comes_back_itself_with_nothing_noted() -> None:
    value, replaced = make_storable(OUTPUT)
    assert value is OUTPUT
    assert replaced == []


def test_nul_and_surrogates_are_replaced_in_values_and_keys_with_their_paths() -> None:
    value, replaced = make_storable(
        {"a\x00": "x\x00y", "b": ["ok", ("\ud800", 1)], "c/d~": {"e": "\udfff\x00"}, "n": None}
    )

    assert value == {
        "a\ufffd": "x\ufffdy",
        "b": ["ok", ("\ufffd", 1)],
        "c/d~": {"e": "\ufffd\ufffd"},
        "n": None,
    }
    assert replaced == ["/a\ufffd", "/b/1/0", "/c~1d~0/e"]
    json.dumps(value).encode("utf-8")


def test_a_replaced_key_never_overwrites_another() -> None:
    value, replaced = make_storable({"a\x00": 1, "a\ufffd": 2})
    assert value == {"a\ufffd\ufffd": 1, "a\ufffd": 2}
    assert replaced == ["/a\ufffd\ufffd"]


def test_a_bare_string_is_replaced_at_the_root_path() -> None:
    assert make_storable("\x00") == ("\ufffd", [""])


def test_a_nul_deeper_than_the_recursion_limit_is_replaced() -> None:
    deep: Any = "\x00"
    for _ in range(5000):
        deep = [deep]
    value, replaced = make_storable(deep)
    assert replaced == ["/0" * 5000]
    assert find_unstorable(value) is None


def test_the_noted_paths_are_bounded() -> None:
    value, replaced = make_storable(["\x00"] * 1000)
    assert len(replaced) == MAX_NOTED_PATHS
    assert value == ["\ufffd"] * 1000


def test_a_clean_node_output_costs_microseconds() -> None:
    # Called for every node the executor runs: it must stay within the cost of one
    # json.dumps of the output (7.6 vs 6.9 µs measured); 10x leaves room for a busy box.
    rounds = 2000
    cost = min(timeit.repeat(lambda: make_storable(OUTPUT), number=rounds, repeat=3)) / rounds
    baseline = min(timeit.repeat(lambda: json.dumps(OUTPUT), number=rounds, repeat=3)) / rounds
    assert cost < 10 * baseline, (cost, baseline)


TEXT = st.text(
    st.sampled_from(["a", "~", "/", "\x00", "\ud800", "\udfff", "\ufffd"]) | st.characters()
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(JSON)
def test_the_result_is_always_storable_and_clean_values_are_unchanged(value: Any) -> None:
    fixed, replaced = make_storable(value)
    assert find_unstorable(fixed) is None
    assert bool(replaced) == (find_unstorable(value) is not None)
    if not replaced:
        assert fixed == value
    json.dumps(fixed, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("text", ["", "plain", "caf\u00e9 \U0001f600", "\ufffd"])
def test_storable_text_is_left_alone(text: str) -> None:
    assert make_storable(text) == (text, [])
