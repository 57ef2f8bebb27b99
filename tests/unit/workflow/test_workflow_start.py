"""``{from: START, to: node}`` declares where a run starts, as LangGraph's ``START`` does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chiffon.workflow import SpecError, load_spec
from tests.support.cli import run_cli

# The first step is also the loop's target, so no node is without an incoming edge:
# only START can say where the run begins.
DRAFT_REVIEW = """\
name: draft-review
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: draft, type: llm, prompt: "Write, revision {score}", output: {text: string}}
  - {id: review, type: llm, prompt: "Score 1-10: {text}", output: {score: integer}}
edges:
  - {from: START, to: draft}
  - {from: draft, to: review}
  - {from: review, to: draft, when: "score < 7", max_iterations: 3}
"""

NO_ENTRY = (
    "edges: no entry node: every node has an incoming edge, so the run cannot start; "
    "at least one node must have no incoming edge"
)


def errors_of(source: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(source, filename="wf.yaml")
    return [str(i) for i in caught.value.issues]


def test_start_declares_the_entry_of_a_loop() -> None:
    spec = load_spec(DRAFT_REVIEW)

    assert spec.entry_nodes() == ("draft",)
    assert spec.declares_entry()


def test_without_start_the_same_loop_has_no_entry_as_before() -> None:
    source = DRAFT_REVIEW.replace("  - {from: START, to: draft}\n", "")

    assert errors_of(source) == [f"{NO_ENTRY} (line 7)"]


def test_without_start_entries_are_the_nodes_without_an_incoming_edge() -> None:
    spec = load_spec("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: one}
  - {id: b, type: llm, prompt: two}
  - {id: c, type: llm, prompt: "{a} {b}"}
edges:
  - {from: [a, b], to: c}
""")

    assert spec.entry_nodes() == ("a", "b")
    assert not spec.declares_entry()


def test_with_start_only_declared_nodes_are_entries() -> None:
    # ``b`` has no incoming edge, but the file says where runs start: b can never run.
    source = """\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: one}
  - {id: b, type: llm, prompt: two}
edges:
  - {from: START, to: a}
"""
    assert errors_of(source) == [
        "nodes[1]: node 'b' can never run: it is not reachable from the entry nodes (a) (line 6)"
    ]


def test_several_start_edges_run_in_parallel_in_file_order() -> None:
    spec = load_spec("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: one}
  - {id: b, type: llm, prompt: two}
edges:
  - {from: START, to: b}
  - {from: START, to: a}
  - {from: START, to: b}
""")

    assert spec.entry_nodes() == ("b", "a")


def test_start_as_a_target_is_refused_with_path_and_line() -> None:
    source = DRAFT_REVIEW + "  - {from: review, to: START, when: 'score >= 7'}\n"

    assert errors_of(source) == [
        "edges[3].to: START cannot be the target of an edge: it is where the run begins; "
        "to run a node again, point the edge at that node (line 11)"
    ]


def test_start_in_a_join_to_end_or_with_a_condition_is_refused() -> None:
    source = (
        DRAFT_REVIEW
        + "  - {from: [START, draft], to: review}\n"
        + "  - {from: START, to: END}\n"
        + "  - {from: START, to: review, when: 'true', max_iterations: 2}\n"
    )

    assert errors_of(source) == [
        "edges[3].from[0]: START cannot be part of a join: write {from: START, to: ...} (line 11)",
        "edges[4].to: an edge from START must lead to a node, not END (line 12)",
        "edges[5].when: an edge from START always fires: it cannot have 'when' (line 13)",
        "edges[5].max_iterations: an edge from START always fires: it cannot have "
        "'max_iterations' (line 13)",
    ]


def test_start_to_an_unknown_node_is_refused() -> None:
    source = DRAFT_REVIEW.replace("{from: START, to: draft}", "{from: START, to: draf}")

    assert errors_of(source) == [
        "edges[0].to: unknown node 'draf' (did you mean 'draft'?) (line 8)"
    ]


def test_a_node_named_start_stays_refused() -> None:
    # START is the edge keyword; a node of that name would make `from: START` ambiguous.
    source = DRAFT_REVIEW.replace("id: review", "id: START")

    assert (
        errors_of(source)[0] == "nodes[1].id: 'START' is reserved and cannot be a node id (line 6)"
    )


async def test_chiffon_validate_accepts_start(tmp_path: Path) -> None:
    path = tmp_path / "draft-review.yaml"
    path.write_text(DRAFT_REVIEW)

    code, out, err = await run_cli(dict(os.environ), "validate", str(path))

    assert code == 0, err
    assert f"{path}: ok — draft-review v1, 2 nodes, 3 edges" in out
