import json
import re
from pathlib import Path

import pytest

from chiffon.workflow import (
    END,
    AgentNode,
    ApprovalNode,
    InputError,
    LlmNode,
    SetNode,
    WorkflowSpec,
    load_spec,
    spec_from_dict,
)


def test_article_writer_loads(article_writer: str) -> None:
    spec = load_spec(article_writer, filename="article.yaml")

    assert (spec.name, spec.version) == ("article-writer", 3)
    assert [type(n) for n in spec.nodes] == [LlmNode, LlmNode, LlmNode, ApprovalNode, AgentNode]
    assert spec.entry_nodes() == ("research",)
    assert [e.to for e in spec.outgoing("review")] == ["write", "approve"]
    assert spec.state_keys() == (
        "topic",
        "facts",
        "draft",
        "score",
        "approved",
        "approval_comment",
        "publish",
    )
    assert spec.output_fields("research") == {"facts": "list[string]"}
    assert spec.budget is not None and spec.budget.max_usd == 0.5


def test_effective_settings_merge_defaults(article_writer: str) -> None:
    spec = load_spec(article_writer)

    assert spec.effective_model("research") == "openai/gpt-4o-mini"
    assert spec.effective_model("write") == "anthropic/claude-sonnet-4"
    assert spec.effective_fallbacks("write") == ("ollama_chat/llama3.1",)
    assert spec.effective_timeout("write") == 60.0
    assert spec.effective_timeout("approve") is None
    assert spec.effective_retry("research").attempts == 3
    assert spec.effective_retry("approve").attempts == 1
    assert spec.effective_on_error("publish") == "fail"


def test_retry_merges_field_by_field() -> None:
    spec = spec_from_dict(
        {
            "name": "r",
            "version": 1,
            "defaults": {
                "model": "chiffon/echo",
                "retry": {"attempts": 4, "backoff": {"max": "10s"}},
            },
            "nodes": [
                {
                    "id": "a",
                    "type": "llm",
                    "prompt": "hi",
                    "timeout": "1m30s",
                    "retry": {"backoff": {"initial": "500ms"}},
                }
            ],
        }
    )
    retry = spec.effective_retry("a")

    assert (retry.attempts, retry.backoff.initial, retry.backoff.max) == (4, 0.5, 10.0)
    assert [retry.delay(n) for n in (1, 2, 3, 6)] == [0.5, 1.0, 2.0, 10.0]
    assert spec.effective_timeout("a") == 90.0


def test_json_form_loads_and_llm_without_output_writes_its_id() -> None:
    source = json.dumps(
        {
            "name": "summarize",
            "version": 1,
            "inputs": {"text": {"type": "string"}, "style": {"type": "string", "default": "brief"}},
            "nodes": [
                {
                    "id": "summary",
                    "type": "llm",
                    "model": "chiffon/echo",
                    "prompt": "Summarize ({style}): {text}",
                }
            ],
            "edges": [{"from": "summary", "to": "END"}],
        },
        indent=2,
    )
    spec = load_spec(source.encode(), filename="summarize.json")

    assert spec.output_fields("summary") == {"summary": "string"}
    assert spec.inputs["text"].required and not spec.inputs["style"].required
    assert spec.validate_inputs({"text": "hello"}) == {"text": "hello", "style": "brief"}
    with pytest.raises(InputError) as err:
        spec.validate_inputs({"txt": 1})
    assert err.value.problems == [
        "unknown input 'txt'; inputs are: text, style",
        "missing required input 'text' (string)",
    ]


def test_canonical_json_is_stable_and_round_trips(article_writer: str) -> None:
    spec = load_spec(article_writer)
    reformatted = load_spec(article_writer.replace("timeout: 60s", "timeout: 1m"))
    again = spec_from_dict(json.loads(spec.canonical_json()))

    assert reformatted.digest() == spec.digest() == again.digest()
    assert len(spec.digest()) == 64
    assert load_spec(article_writer.replace("version: 3", "version: 4")).digest() != spec.digest()


def test_join_edges_wait_for_all_sources() -> None:
    spec = load_spec("""
name: fan-out
version: 1
defaults: {model: chiffon/echo}
inputs: {q: {type: string}}
nodes:
  - {id: plan, type: llm, prompt: "{q}"}
  - {id: a, type: llm, prompt: "A {plan}", output: {ra: string}}
  - {id: b, type: llm, prompt: "B {plan}", output: {rb: string}}
  - {id: merge, type: llm, prompt: "{ra} {rb}"}
edges:
  - {from: plan, to: a}
  - {from: plan, to: b}
  - {from: [a, b], to: merge}
  - {from: merge, to: END}
""")
    join = spec.edges[2]

    assert join.is_join and join.sources == ("a", "b")
    assert spec.outgoing("a") == spec.outgoing("b") == (join,)
    assert spec.incoming("merge") == (join,)
    assert spec.edges[3].to == END


def test_loop_bounded_only_by_max_iterations_is_accepted() -> None:
    spec = load_spec("""
name: polish
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: draft, type: llm, prompt: "Write a haiku"}
  - {id: improve, type: llm, prompt: "Improve: {draft}", output: {draft: string}}
edges:
  - {from: draft, to: improve}
  - {from: improve, to: improve, max_iterations: 3}
""")
    assert spec.edges[1].max_iterations == 3
    assert spec.output_fields("draft") == {"draft": "string"}


def test_set_nodes_and_on_reject_loop() -> None:
    spec = load_spec("""
name: counter
version: 1
inputs: {start: {type: integer, default: 0}}
nodes:
  - {id: init, type: set, values: {count: start}}
  - id: bump
    type: set
    values: {count: "count + 1", big: "count + 1 >= 3"}
  - id: check
    type: approval
    message: "Count is {count}. Stop here?"
    on_reject: bump
edges:
  - {from: init, to: bump}
  - {from: bump, to: check}
  - {from: check, to: END, when: approved}
""")
    assert isinstance(spec.node("bump"), SetNode)
    assert spec.writes("bump") == ("count", "big")
    assert spec.entry_nodes() == ("init",)
    assert spec.state_keys() == ("start", "count", "big", "approved", "approval_comment")
    values = {"count": 2}
    assert {k: v.evaluate(values) for k, v in spec.set_expressions("bump").items()} == {
        "count": 3,
        "big": True,
    }


def test_model_validate_also_runs_graph_checks(article_writer: str) -> None:
    data = json.loads(load_spec(article_writer).canonical_json())
    data["edges"][0]["to"] = "nowhere"

    with pytest.raises(ValueError, match="edges\\[0\\].to: unknown node 'nowhere'"):
        WorkflowSpec.model_validate(data)


def test_initial_state_has_every_key() -> None:
    spec = load_spec("""
name: t
version: 1
inputs: {q: {type: string}, n: {type: integer, default: 2}}
defaults: {model: chiffon/echo}
nodes:
  - {id: answer, type: llm, prompt: "{q} {n}"}
  - {id: ok, type: approval, message: "{answer}"}
edges:
  - {from: answer, to: ok}
""")
    assert spec.initial_state({"q": "why", "n": "3"}) == {
        "q": "why",
        "n": 3,
        "answer": None,
        "approved": None,
        "approval_comment": None,
    }


def test_every_complete_example_in_the_reference_loads() -> None:
    doc = Path(__file__).parents[3] / "docs" / "workflow-spec.md"
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    specs = [load_spec(block) for block in blocks if block.startswith("name:")]

    assert [s.name for s in specs] == ["article-writer", "polish", "research-report"]
    assert specs[2].entry_nodes() == ("web", "brainstorm")
