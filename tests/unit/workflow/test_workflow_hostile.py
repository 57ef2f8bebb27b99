"""Hostile workflow documents and run inputs: a spec or issues with paths, never a crash.

Issue 16: merge keys gave ``KeyError: 'type'`` (a 503), a merge-key alias bomb the same,
and a NUL or lone surrogate in a workflow or a run input a ``UnicodeEncodeError``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chiffon.events.limits import WORKFLOW_MAX_BYTES
from chiffon.workflow import InputError, SpecError, WorkflowSpec, load_spec


def node_values(spec: WorkflowSpec, node_id: str) -> dict[str, str]:
    node = next(n for n in spec.nodes if n.id == node_id)
    return {k: str(v) for k, v in node.values.items()}  # type: ignore[union-attr]


def loads_or_issues(source: str | bytes) -> list[str]:
    try:
        load_spec(source)
    except SpecError as exc:
        return [str(i) for i in exc.issues]
    return []


def test_merge_keys_in_the_nodes_of_a_valid_workflow() -> None:
    source = """\
name: merged
version: 1
nodes:
  - &base {id: first, type: set, values: {shared: "'base'"}}
  - <<: *base
    id: second
  - <<: [{id: third}, *base]
    values: {own: "'mine'"}
edges:
  - {from: first, to: second}
  - {from: second, to: third}
"""
    spec = load_spec(source)

    assert [(n.id, n.type) for n in spec.nodes] == [
        ("first", "set"),
        ("second", "set"),
        ("third", "set"),
    ]
    assert set(node_values(spec, "second")) == {"shared"}
    # YAML 1.1: the mapping's own keys win over merged ones, earlier merges over later.
    assert set(node_values(spec, "third")) == {"own"}


def test_a_merged_field_that_is_wrong_is_reported_at_its_path_and_source_line() -> None:
    source = """\
name: merged
version: 1
x: &base
  type: sett
nodes:
  - <<: *base
    id: first
edges: []
"""
    issues = loads_or_issues(source)

    assert any("nodes[0].type" in i and "unknown node type 'sett'" in i for i in issues), issues


def merge_bomb(levels: int, width: int) -> str:
    lines = ["l0: &l0 {" + ", ".join(f"k{i}: {'x' * 40}" for i in range(width)) + "}"]
    for n in range(1, levels):
        refs = ", ".join(f"k{i}: {{<<: *l{n - 1}}}" for i in range(width))
        lines.append(f"l{n}: &l{n} {{{refs}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(merge_bomb(12, 10), id="merge-key bomb"),
        pytest.param(
            "big: &s " + "x" * 60_000 + "\nrefs: [" + ", ".join(["*s"] * 100) + "]\n",
            id="one long string referenced 100 times",
        ),
        pytest.param(
            "a: &a ["
            + ", ".join(["x"] * 9)
            + "]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
                for i in range(8)
            ),
            id="billion laughs",
        ),
    ],
)
def test_an_alias_bomb_is_refused_quickly_on_its_expanded_size(source: str) -> None:
    assert len(source.encode()) < WORKFLOW_MAX_BYTES
    started = time.perf_counter()
    issues = loads_or_issues(source)
    elapsed = time.perf_counter() - started

    assert any("expands to more than" in i or "more than 100000 values" in i for i in issues), (
        issues
    )
    assert elapsed < 2.0


def test_aliases_within_the_size_limit_still_load() -> None:
    source = """\
name: shared
version: 1
nodes:
  - {id: first, type: set, values: &v {a: "'x'", b: "'y'"}}
  - {id: second, type: set, values: *v}
edges:
  - {from: first, to: second}
"""
    assert [n.id for n in load_spec(source).nodes] == ["first", "second"]


NUL = "contains a NUL character"
SURROGATE = "contains a lone surrogate (U+D800)"


@pytest.mark.parametrize(
    ("source", "path", "reason"),
    [
        ('name: "a\\0b"\n', "name", NUL),
        ('name: "\\ud800"\n', "name", SURROGATE),
        ('{"name": "\\ud800"}', "name", SURROGATE),
        (b'{"name": "\\ud800"}', "name", SURROGATE),
        ('{"nodes": [{"values": {"k": "\\u0000"}}]}', "nodes[0].values.k", NUL),
        ("a: " + "[" * 40 + '"\\ud800"' + "]" * 40 + "\n", "a" + "[0]" * 40, SURROGATE),
        ('{"nodes": {"\\ud800": 1}}', "nodes", "key '\\ud800' " + SURROGATE),
        ('nodes: {"k\\0": 1}\n', "nodes", "key 'k\\x00' " + NUL),
    ],
)
def test_nul_and_lone_surrogates_are_refused_with_their_path(
    source: str | bytes, path: str, reason: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(source)

    found = [i for i in caught.value.issues if i.path == path]
    assert found and reason in found[0].message, caught.value.issues
    str(caught.value).encode("utf-8")  # the report itself is printable and storable


def test_a_literal_surrogate_in_the_text_is_a_spec_issue() -> None:
    issues = loads_or_issues("name: x\n# \ud800\n")
    assert issues and all(i.encode() for i in issues)


INPUTS_WORKFLOW = """\
name: inputs
version: 1
inputs: {data: {type: object}, items: {type: list[string]}}
nodes:
  - {id: first, type: set, values: {copy: data}}
edges: []
"""


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"data": {"a": "x\x00"}}, "inputs.data.a: " + NUL),
        ({"data": {"a": ["ok", "\ud800"]}}, "inputs.data.a[1]: " + SURROGATE),
        ({"data": {"\ud800": 1}}, "inputs.data: key '\\ud800' " + SURROGATE),
        ({"data": {"b\x00": 1}}, "inputs.data: key 'b\\x00' " + NUL),
        ({"\ud800": 1}, "inputs: key '\\ud800' " + SURROGATE),
        ({"data": nested(70, "\x00")}, "inputs.data" + ".k" * 70 + ": " + NUL),
        ({"data": nested(5000, "\ud800")}, SURROGATE),
    ],
)
def test_run_inputs_with_nul_or_surrogates_are_refused_at_any_depth(
    inputs: dict[str, Any], expected: str
) -> None:
    try:
        spec = load_spec(INPUTS_WORKFLOW)
    except SpecError as exc:  # pragma: no cover - the fixture must load
        pytest.fail(str(exc))

    with pytest.raises(InputError) as caught:
        spec.validate_inputs(inputs)

    assert len(caught.value.problems) == 1
    assert expected in caught.value.problems[0]
    str(caught.value).encode("utf-8")


# -- generated documents: a spec or a SpecError with issues, never another exception --

_scalars = st.one_of(
    st.text(alphabet=st.characters(codec=None, blacklist_categories=()), max_size=8),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\x07", "\x1b", "\r", "\u2028", "\ufeff"]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=5) | st.sampled_from(["\x00", "\ud800", "<<"]), inner, max_size=4
        )
    ),
    max_leaves=30,
)


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a YAML double-quoted scalar, escapes kept
    return json.dumps(value) if value is not None else "~"


_yaml_docs = st.builds(
    lambda anchors, body, depth, tail: (
        "".join(
            f"a{i}: &a{i} {{k{i}: {_yaml_scalar(v)}, n: [*a{i - 1}]}}\n"
            if i
            else f"a0: &a0 {{k0: {_yaml_scalar(v)}}}\n"
            for i, v in enumerate(anchors)
        )
        + "m:\n  <<: ["
        + ", ".join(f"*a{i}" for i in range(len(anchors)))
        + "]\n"
        + f"  body: {body}\n"
        + "deep: "
        + "[" * depth
        + "1"
        + "]" * depth
        + "\n"
        + tail
    ),
    st.lists(_scalars, min_size=1, max_size=6),
    _json_values.map(lambda v: json.dumps(v, ensure_ascii=True)),
    st.integers(min_value=0, max_value=200),
    st.text(max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_yaml_docs, _json_values.map(lambda v: json.dumps({"name": v}))))
def test_generated_documents_give_a_spec_or_issues(source: str) -> None:
    for form in (source, source.encode("utf-8", "surrogatepass")):
        try:
            load_spec(form)
        except SpecError as exc:
            assert exc.issues
            str(exc).encode("utf-8")
