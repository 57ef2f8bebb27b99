"""Every name a workflow file holds has one limit, refused with its path and line.

The limits are the widths of the columns and event fields that store the names
(``chiffon.events.limits``): a file that loads can always be run and shown.
"""

from __future__ import annotations

import json

import pytest

from chiffon.events.limits import (
    CAPABILITY_MAX_CHARS,
    MODEL_NAME_MAX_CHARS,
    NODE_ID_MAX_CHARS,
    VARIABLE_NAME_MAX_CHARS,
    WORKFLOW_MAX_BYTES,
    WORKFLOW_NAME_MAX_CHARS,
    WORKFLOW_VERSION_MAX,
)
from chiffon.workflow import SpecError, WorkflowSpec, load_spec


def named(
    *,
    name: str = "limits",
    version: int | str = 1,
    node: str = "draft",
    input_name: str = "topic",
    output: str = "text",
    target: str = "count",
    model: str = "chiffon/echo",
    capability: str = "shell",
) -> str:
    """A workflow that uses every kind of name once: each at a known line."""
    return f"""\
name: {name}
version: {version}
inputs:
  {input_name}: {{type: string}}
nodes:
  - id: {node}
    type: llm
    model: {model}
    prompt: "Write about {{{input_name}}}"
    output: {{{output}: string}}
  - id: tally
    type: set
    values:
      {target}: "1"
  - {{id: run, type: agent, requires: [{capability}], task: {{tool: shell, command: "echo"}}}}
edges:
  - {{from: {node}, to: tally}}
  - {{from: tally, to: run}}
outputs: [{output}, {target}]
"""


def errors_of(source: str | bytes) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(source, filename="wf.yaml")
    return [str(i) for i in caught.value.issues]


def test_every_name_at_its_limit_loads() -> None:
    spec = load_spec(
        named(
            name="w" * WORKFLOW_NAME_MAX_CHARS,
            version=WORKFLOW_VERSION_MAX,
            node="n" * NODE_ID_MAX_CHARS,
            input_name="i" * VARIABLE_NAME_MAX_CHARS,
            output="o" * VARIABLE_NAME_MAX_CHARS,
            target="t" * VARIABLE_NAME_MAX_CHARS,
            model="p/" + "m" * (MODEL_NAME_MAX_CHARS - 2),
            capability="c" * CAPABILITY_MAX_CHARS,
        )
    )

    assert isinstance(spec, WorkflowSpec)
    assert spec.nodes[0].id == "n" * NODE_ID_MAX_CHARS
    assert spec.run_outputs() == ("o" * VARIABLE_NAME_MAX_CHARS, "t" * VARIABLE_NAME_MAX_CHARS)


def test_a_node_id_one_character_too_long_names_its_path_and_line() -> None:
    long_id = "n" * (NODE_ID_MAX_CHARS + 1)

    assert errors_of(named(node=long_id)) == [
        f"nodes[0].id: node id is too long ({NODE_ID_MAX_CHARS + 1} characters; "
        f"the limit is {NODE_ID_MAX_CHARS}) (line 6)"
    ]


def test_the_third_node_is_named_by_its_index() -> None:
    long_id = "x" * (NODE_ID_MAX_CHARS + 1)
    source = named().replace("id: run,", f"id: {long_id},")

    assert errors_of(source) == [
        f"nodes[2].id: node id is too long ({NODE_ID_MAX_CHARS + 1} characters; "
        f"the limit is {NODE_ID_MAX_CHARS}) (line 15)"
    ]


@pytest.mark.parametrize(
    ("field", "limit", "path", "line", "what"),
    [
        ("name", WORKFLOW_NAME_MAX_CHARS, "name", 1, "name"),
        ("input_name", VARIABLE_NAME_MAX_CHARS, "inputs.{}", 4, "name"),
        ("target", VARIABLE_NAME_MAX_CHARS, "nodes[1].values.{}", 14, "name"),
        ("capability", CAPABILITY_MAX_CHARS, "nodes[2].requires[0]", 15, "capability"),
    ],
)
def test_each_name_one_character_too_long_is_refused_where_it_is_written(
    field: str, limit: int, path: str, line: int, what: str
) -> None:
    value = "a" * (limit + 1)
    source = named(**{field: value})
    expected = (
        f"{path.format(value)}: {what} is too long ({limit + 1} characters; "
        f"the limit is {limit}) (line {line})"
    )

    assert expected in errors_of(source)


def test_an_output_name_too_long_is_refused_where_declared_and_where_listed() -> None:
    value = "o" * (VARIABLE_NAME_MAX_CHARS + 1)
    message = f"name is too long ({VARIABLE_NAME_MAX_CHARS + 1} characters; the limit is {VARIABLE_NAME_MAX_CHARS})"

    errors = errors_of(named(output=value))

    assert f"nodes[0].output.{value}: {message} (line 10)" in errors
    assert f"outputs[0]: {message} (line 19)" in errors


def test_a_model_name_too_long_is_refused() -> None:
    model = "p/" + "m" * (MODEL_NAME_MAX_CHARS - 1)

    assert errors_of(named(model=model)) == [
        f"nodes[0].model: model is too long ({MODEL_NAME_MAX_CHARS + 1} characters; "
        f"the limit is {MODEL_NAME_MAX_CHARS}) (line 8)"
    ]


def test_a_version_beyond_a_postgresql_integer_is_refused() -> None:
    assert errors_of(named(version=WORKFLOW_VERSION_MAX + 1)) == [
        f"version: should be less than or equal to {WORKFLOW_VERSION_MAX} (line 2)"
    ]


def test_a_file_over_the_workflow_limit_is_refused_before_parsing() -> None:
    source = named() + "#" * WORKFLOW_MAX_BYTES

    assert errors_of(source) == [
        f"file is too large ({len(source)} bytes; the limit is {WORKFLOW_MAX_BYTES} bytes, "
        f"{WORKFLOW_MAX_BYTES // 1024} KiB)"
    ]


@pytest.mark.parametrize("as_json", [False, True])
def test_source_and_canonical_form_together_must_fit_one_event(as_json: bool) -> None:
    """A file under the limit whose canonical form takes it over is refused by the same
    check that the executor relies on when it registers the file."""
    prompts = "\n".join(
        f"  - {{id: n{i}, type: llm, model: chiffon/echo, prompt: {'y' * 60_000}}}"
        for i in range(8)
    )
    source = f"name: big\nversion: 1\nnodes:\n{prompts}\n"
    if as_json:
        source = json.dumps(
            {
                "name": "big",
                "version": 1,
                "nodes": [
                    {"id": f"n{i}", "type": "llm", "model": "chiffon/echo", "prompt": "y" * 60_000}
                    for i in range(8)
                ],
            }
        )
    assert len(source.encode()) < WORKFLOW_MAX_BYTES

    (error,) = errors_of(source)

    assert error.startswith("the workflow with its canonical form is too large (")
    assert error.endswith(f"the limit is {WORKFLOW_MAX_BYTES} bytes, 900 KiB)")
