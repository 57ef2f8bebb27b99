"""Memory keys and patterns, refused at the edge when hostile, and the fold of a namespace:
a pattern with ``*`` sees the latest write to any key it matches."""

from __future__ import annotations

import pytest

from chiffon.events import CATALOG, Actor, new_event
from chiffon.events.memory import (
    MEMORY_KEY_MAX_CHARS,
    MemoryKey,
    MemoryKeyError,
    MemoryState,
    MemoryWritten,
    aggregate_id,
    parse_key,
)


def test_a_key_has_four_literal_parts() -> None:
    key = parse_key("infra:deploy:ship:last_deploy")
    assert key == MemoryKey("infra", "deploy", "ship", "last_deploy")
    assert str(key) == "infra:deploy:ship:last_deploy"


def test_a_pattern_may_leave_the_workflow_and_the_node_open() -> None:
    pattern = parse_key("infra:*:*:last_deploy", wildcards=True)
    assert pattern.matches("deploy", "ship", "last_deploy")
    assert pattern.matches("other", "node", "last_deploy")
    assert not pattern.matches("deploy", "ship", "last_run")
    only_deploy = parse_key("infra:deploy:*:last_deploy", wildcards=True)
    assert not only_deploy.matches("other", "ship", "last_deploy")


@pytest.mark.parametrize(
    ("text", "wildcards", "reason"),
    [
        ("infra:*:*:last", False, "invalid workflow '*'"),
        ("*:deploy:ship:last", True, "invalid namespace '*'"),
        ("infra:deploy:ship:*", True, "invalid key name '*'"),
        ("../etc:deploy:ship:passwd", True, "invalid namespace '../etc'"),
        ("infra:../../etc:ship:x", True, "invalid workflow '../../etc'"),
        ("infra:deploy:ship:a/b", False, "invalid key name 'a/b'"),
        ("infra:deploy:sh\x00ip:x", False, "invalid node"),
        ("infra:deploy:ship", False, "4 parts"),
        ("infra:deploy:ship:x:y", False, "4 parts"),
        ("Infra:deploy:ship:x", False, "invalid namespace"),
        ("infra:deploy:ship:" + "x" * 101, False, "key name is too long (101"),
        ("x" * 10_000, True, f"the limit is {MEMORY_KEY_MAX_CHARS}"),
    ],
)
def test_a_hostile_key_is_refused_with_the_part_that_is_wrong(
    text: str, wildcards: bool, reason: str
) -> None:
    with pytest.raises(MemoryKeyError, match=None) as refused:
        parse_key(text, wildcards=wildcards)
    assert reason in str(refused.value)


def test_an_agent_name_with_dots_is_one_subject_token() -> None:
    assert aggregate_id("gpu.box-1") == "gpuDbox-1"
    assert aggregate_id("infra") == "infra"
    with pytest.raises(MemoryKeyError):
        aggregate_id("a b")


def written(
    node: str, value: object, version: int, run_id: str, workflow: str = "deploy"
) -> MemoryWritten:
    return MemoryWritten(
        namespace="infra",
        workflow=workflow,
        node_id=node,
        name="last_deploy",
        value=value,  # type: ignore[arg-type]
        version=version,
        run_id=run_id,
    )


def test_the_fold_reads_the_latest_write_of_any_key_a_pattern_matches() -> None:
    state = MemoryState("infra")
    state.evolve(written("ship", "v1", 1, "r1"), 10)
    state.evolve(written("ship", "v2", 2, "r3"), 11)
    state.evolve(written("rollback", "v0", 1, "r2", workflow="undo"), 12)
    anywhere = state.read(parse_key("infra:*:*:last_deploy", wildcards=True))
    assert (anywhere.key, anywhere.value, anywhere.version) == (
        "infra:undo:rollback:last_deploy",
        "v0",
        1,
    )
    shipped = state.read(parse_key("infra:deploy:ship:last_deploy", wildcards=True))
    assert (shipped.value, shipped.version) == ("v2", 2)
    nothing = state.read(parse_key("infra:*:*:never", wildcards=True))
    assert (nothing.key, nothing.value, nothing.version) == (None, None, 0)
    assert state.version == 12


def test_an_event_folded_twice_changes_nothing() -> None:
    state = MemoryState("infra")
    state.evolve(written("ship", "v1", 1, "r1"), 5)
    state.evolve(written("ship", "v1", 1, "r1"), 5)
    assert state.read(parse_key("infra:*:*:last_deploy", wildcards=True)).version == 1


def test_a_node_execution_that_wrote_writes_nothing_again() -> None:
    state = MemoryState("infra")
    first = state.writes(
        workflow="deploy", node_id="ship", run_id="r1", iteration=1, values={"last_deploy": "v1"}
    )
    assert [(w.version, w.value) for w in first] == [(1, "v1")]
    state.evolve(first[0], 1)
    again = state.writes(
        workflow="deploy", node_id="ship", run_id="r1", iteration=1, values={"last_deploy": "v1"}
    )
    assert again == []
    next_run = state.writes(
        workflow="deploy", node_id="ship", run_id="r2", iteration=1, values={"last_deploy": "v2"}
    )
    assert [w.version for w in next_run] == [2]


@pytest.mark.parametrize(
    ("value", "reason"),
    [("x" * 70_000, "too large to remember"), (float("nan"), "must be JSON")],
)
def test_a_value_that_is_too_large_or_not_json_is_refused(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        written("ship", value, 1, "r1")


def test_memory_events_round_trip_through_the_catalog() -> None:
    event = new_event(
        written("ship", {"tag": "v1", "hosts": [1, 2]}, 3, "r1"),
        aggregate_id="infra",
        actor=Actor.service("executor", 1),
    )
    decoded = CATALOG.decode(event.model_dump_json())
    assert isinstance(decoded.payload, MemoryWritten)
    assert decoded.payload.value == {"tag": "v1", "hosts": [1, 2]}
    assert decoded.payload.key == "infra:deploy:ship:last_deploy"
