"""``{from: START, to: draft}``: a workflow whose first step is also its loop's target runs."""

from __future__ import annotations

import json

import pytest

from chiffon.workflow import SpecError, load_spec

from .graph_support import (  # noqa: F401 — provider: the autouse test server
    RunLog,
    ScriptedLlm,
    completed,
    last,
    provider,
    run,
)

DRAFT_REVIEW = """
name: draft-review
version: 1
inputs: {topic: {type: string}}
defaults: {model: openai/x}
nodes:
  - {id: draft, type: llm, prompt: "Write about {topic}; last score {score}", output: {text: string}}
  - {id: review, type: llm, prompt: "Score 1-10: {text}", output: {score: integer}}
edges:
  - {from: START, to: draft}
  - {from: draft, to: review}
  - {from: review, to: draft, when: "score < 7", max_iterations: 3}
"""


async def test_the_draft_review_loop_with_start_runs_to_completion(log: RunLog) -> None:
    scores = iter([3, 5, 8])
    llm = ScriptedLlm(
        lambda _m, _msgs, schema: (
            json.dumps({"score": next(scores)})
            if schema and "score" in schema["properties"]
            else None
        )
    )

    outcome, _, _ = await run(log, DRAFT_REVIEW, {"topic": "tides"}, llm=llm)

    assert outcome == "succeeded"
    assert [n for n, _ in await completed(log)] == ["draft", "review"] * 3
    prompts = [p for _m, p in llm.calls if p.startswith("Write")]
    assert prompts == [
        "Write about tides; last score ",  # the entry ran first, before any review
        "Write about tides; last score 3",
        "Write about tides; last score 5",
    ]
    assert (await last(log, "run.completed")).outputs["score"] == 8


async def test_the_loop_still_stops_at_max_iterations(log: RunLog) -> None:
    llm = ScriptedLlm(
        lambda _m, _msgs, schema: (
            json.dumps({"score": 1}) if schema and "score" in schema["properties"] else None
        )
    )

    outcome, _, _ = await run(log, DRAFT_REVIEW, {"topic": "tides"}, llm=llm)

    assert outcome == "succeeded"
    assert [n for n, _ in await completed(log)] == ["draft", "review"] * 4


def test_without_start_the_loop_is_refused_as_before() -> None:
    without = DRAFT_REVIEW.replace("  - {from: START, to: draft}\n", "")

    with pytest.raises(SpecError) as refused:
        load_spec(without, filename="draft-review.yaml")

    assert [str(i) for i in refused.value.issues] == [
        "edges: no entry node: every node has an incoming edge, so the run cannot start; "
        "at least one node must have no incoming edge (line 9)"
    ]
