"""``memory`` on a node, checked when the workflow loads: the node reads only what it
declares (``{memory_<name>}``), writes only its own fields, under a namespace it can
name; hostile keys and too many reads are refused with their path and line."""

from __future__ import annotations

import pytest

from chiffon.workflow import SpecError, load_spec

BASE = """
name: infra
version: 1
inputs: {release: {type: string}}
nodes:
{nodes}
"""


def issues(nodes: str) -> list[str]:
    with pytest.raises(SpecError) as refused:
        load_spec(BASE.replace("{nodes}", nodes))
    return [f"{i.path}: {i.message}" for i in refused.value.issues]


def test_a_node_reads_and_writes_what_it_declares() -> None:
    spec = load_spec(
        BASE.replace(
            "{nodes}",
            """
  - id: ship
    type: agent
    requires: [shell]
    task: {tool: shell, command: "deploy {release} --since {memory_last_deploy}"}
    output: {last_deploy: string}
    memory: {read: ["infra:*:*:last_deploy"], write: [last_deploy]}
  - id: note
    type: set
    values: {count: "(memory_count or 0) + 1"}
    memory: {namespace: infra, read: ["infra:infra:note:count"], write: [count]}
""",
        )
    )
    memory = spec.node("ship").memory
    assert memory is not None and memory.namespace is None
    assert {v: str(k) for v, k in memory.patterns().items()} == {
        "memory_last_deploy": "infra:*:*:last_deploy"
    }
    assert "memory" in spec.canonical_json()


def test_a_workflow_without_memory_keeps_its_digest() -> None:
    source = BASE.replace("{nodes}", '  - {id: s, type: set, values: {x: "1"}}')
    assert '"memory"' not in load_spec(source).canonical_json()


def test_an_undeclared_read_is_refused_with_how_to_declare_it() -> None:
    found = issues(
        '  - {id: ask, type: llm, model: chiffon/echo, prompt: "was {memory_last_deploy}"}'
    )
    assert found == [
        "nodes[0].prompt: unknown variable 'memory_last_deploy'; to read memory, declare it "
        "on the node: memory: {read: ['<namespace>:*:*:last_deploy']}"
    ]


def test_a_read_declared_on_another_node_is_not_this_nodes() -> None:
    found = issues(
        """
  - {id: a, type: set, values: {x: "memory_seen"}, memory: {read: ["infra:*:*:seen"]}}
  - {id: b, type: set, values: {y: "memory_seen"}}
"""
    )
    assert found == [
        "nodes[1].values.y: unknown variable 'memory_seen'; to read memory, declare it "
        "on the node: memory: {read: ['<namespace>:*:*:seen']}"
    ]


def test_a_node_writes_only_its_own_fields_under_a_namespace() -> None:
    found = issues(
        """
  - {id: s, type: set, values: {x: "1"}, memory: {write: [x, y]}}
  - {id: a, type: approval, message: "ok?", memory: {namespace: ops, write: [approved]}}
"""
    )
    assert found == [
        "nodes[0].memory.write[1]: 'y' is not a field this node writes; it writes: x",
        "nodes[0].memory.namespace: a namespace is needed to write memory from a set node "
        "(agent nodes write under the agent's name): memory: {namespace: <name>, write: [...]}",
    ]


def test_a_read_that_would_hide_a_state_key_is_refused() -> None:
    found = issues(
        """
  - {id: s, type: set, values: {memory_x: "1"}, memory: {read: ["ops:*:*:x"]}}
"""
    )
    assert found == [
        "nodes[0].memory.read[0]: the read fills {memory_x}, which is also a state key; "
        "rename the state key"
    ]


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ('{read: ["../../etc:*:*:passwd"]}', "invalid namespace '../../etc'"),
        ('{read: ["ops:*:*:../x"]}', "invalid key name '../x'"),
        ('{read: ["ops:*:*"]}', "4 parts"),
        ('{read: ["ops:*:*:' + "k" * 5000 + '"]}', "the key is too long (5008 characters"),
        ('{namespace: "ops/../x", write: [x]}', "invalid namespace 'ops/../x'"),
        ("{write: [x, x], namespace: ops}", "'x' is listed twice"),
        ('{read: ["a:*:*:x", "b:*:*:x"]}', "two reads are named 'x'"),
        ("{}", "declare what the node reads or writes"),
        ("{reads: []}", "reads"),
        (
            "{read: [" + ", ".join(f'"ops:*:*:k{i}"' for i in range(9)) + "]}",
            "at most 8 items",
        ),
    ],
)
def test_a_bad_declaration_is_refused_with_its_path(memory: str, message: str) -> None:
    found = issues(f'  - {{id: s, type: set, values: {{x: "1"}}, memory: {memory}}}')
    assert len(found) == 1 and found[0].startswith("nodes[0].memory"), found
    assert message in found[0], found


def test_a_nul_in_a_key_is_refused_when_the_file_loads() -> None:
    with pytest.raises(SpecError) as refused:
        load_spec(
            BASE.replace(
                "{nodes}",
                '  - {id: s, type: set, values: {x: "1"}, memory: {read: ["ops:*:*:a\\0b"]}}',
            )
        )
    assert "nodes[0].memory.read" in str(refused.value), str(refused.value)
