"""``prefer_local_below`` in a workflow: on an llm node or in ``defaults``, a percentage
written "20%" or 20, refused with its path when it is not one."""

from __future__ import annotations

import pytest

from chiffon.workflow import SpecError, load_spec


def spec(node_extra: str = "", defaults: str = "") -> str:
    return f"""\
name: frugal
version: 1
{defaults}
nodes:
  - id: draft
    type: llm
    model: openai/gpt-4o-mini
    fallbacks: [ollama_chat/llama3.1]
    prompt: hello
{node_extra}
edges:
  - from: START
    to: draft
  - from: draft
    to: END
"""


@pytest.mark.parametrize(("written", "share"), [('"20%"', 20.0), ("20", 20.0), ('"7.5 %"', 7.5)])
def test_a_node_says_below_which_share_it_prefers_a_local_model(written: str, share: float) -> None:
    loaded = load_spec(spec(f"    prefer_local_below: {written}"))
    assert loaded.effective_prefer_local_below("draft") == share


def test_the_workflow_default_applies_unless_the_node_says_otherwise() -> None:
    defaults = "defaults:\n  prefer_local_below: 30%"
    assert load_spec(spec(defaults=defaults)).effective_prefer_local_below("draft") == 30.0
    both = spec("    prefer_local_below: 0", defaults)
    assert load_spec(both).effective_prefer_local_below("draft") == 0.0
    assert load_spec(spec()).effective_prefer_local_below("draft") is None


@pytest.mark.parametrize("written", ['"120%"', "-1", '"lots"', "true", "[20]"])
def test_a_share_that_is_not_a_percentage_is_refused_with_its_path(written: str) -> None:
    with pytest.raises(SpecError) as refused:
        load_spec(spec(f"    prefer_local_below: {written}"))
    message = str(refused.value.issues[0].path) + " " + refused.value.issues[0].message
    assert "prefer_local_below" in message
    assert "percentage" in message
