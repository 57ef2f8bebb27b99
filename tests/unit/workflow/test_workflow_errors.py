"""Every invalid file gives each problem with its path and line, never a traceback."""

import pytest

from chiffon.workflow import SpecError, SpecIssue, load_spec, spec_from_dict


def errors_of(source: str | bytes) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(source, filename="wf.yaml")
    assert str(caught.value) == "\n".join(str(i) for i in caught.value.issues)
    return [str(i) for i in caught.value.issues]


def test_issue_prints_path_message_and_line() -> None:
    assert str(SpecIssue("nodes[2].when", 14, "unknown variable 'scroe'")) == (
        "nodes[2].when: unknown variable 'scroe' (line 14)"
    )
    assert str(SpecIssue("", None, "file is empty")) == "file is empty"


def test_misspelled_variable_in_condition(article_writer: str) -> None:
    source = article_writer.replace('when: "score < 7"', 'when: "scroe < 7"')

    assert errors_of(source) == [
        "edges[2].when: unknown variable 'scroe' (did you mean 'score'?) (line 16)"
    ]


def test_misspelled_variable_in_prompt_and_task() -> None:
    assert errors_of("""\
name: t
version: 1
inputs: {topic: {type: string}}
nodes:
  - id: a
    type: llm
    model: chiffon/echo
    prompt: |
      Write about {topc}.
  - id: b
    type: agent
    task:
      tool: shell
      args: ["--title", "{titel}"]
edges:
  - {from: a, to: b}
""") == [
        "nodes[0].prompt: unknown variable 'topc' (did you mean 'topic'?) (line 8)",
        "nodes[1].task.args[1]: unknown variable 'titel' (line 14)",
    ]


def test_all_structural_errors_are_reported_together(article_writer: str) -> None:
    source = (
        article_writer.replace("type: approval", "type: aproval")
        .replace('prompt: "Score', 'promt: "Score')
        .replace("version: 3", "version: 0")
        .replace("timeout: 60s", "timeout: 60 seconds")
    )
    assert errors_of(source) == [
        "version: should be greater than or equal to 1 (line 2)",
        "defaults.timeout: invalid duration '60 seconds': use a number with a unit, "
        "e.g. '500ms', '30s', '5m', '1h' or '1m30s' (line 4)",
        "nodes[2].prompt: missing required field (line 10)",
        "nodes[2].promt: unknown field 'promt' (did you mean 'prompt'?) (line 10)",
        "nodes[3].type: unknown node type 'aproval' (did you mean 'approval'?); "
        "allowed types: llm, approval, agent, set (line 11)",
    ]


def test_unknown_top_level_key_and_wrong_types() -> None:
    assert errors_of("""\
name: Bad Name
version: 1
edge: []
nodes:
  - {id: 1st, type: llm, prompt: 42, model: chiffon/echo, output: {n: int}}
""") == [
        "name: invalid name 'Bad Name': use lowercase letters, digits, '-' and '_' "
        "(start with a letter or digit, at most 63 characters) (line 1)",
        "edge: unknown field 'edge' (did you mean 'edges'?) (line 3)",
        "nodes[0].id: invalid node id '1st': use letters, digits and '_', "
        "not starting with a digit (line 5)",
        "nodes[0].prompt: expected a string, got integer (line 5)",
        "nodes[0].output.n: unknown type 'int' (did you mean 'integer'?); "
        "allowed: string, integer, number, boolean, object, list[T] (line 5)",
    ]


def test_duplicate_ids_unknown_edge_nodes_and_on_reject() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: write, type: llm, prompt: hi}
  - {id: write, type: llm, prompt: again}
  - {id: ok, type: approval, message: Fine?, on_reject: rewrite}
edges:
  - {from: write, to: ok}
  - {from: [write, wrte], to: END}
  - {from: ok, to: publsh}
""") == [
        "nodes[1].id: duplicate node id 'write' (first used by nodes[0]) (line 6)",
        "nodes[2].on_reject: unknown node 'rewrite' (did you mean 'write'?); "
        "expected a node id or 'fail' (line 7)",
        "edges[1].from[1]: unknown node 'wrte' (did you mean 'write'?) (line 10)",
        "edges[2].to: unknown node 'publsh' (line 11)",
    ]


def test_template_syntax_errors_name_the_column() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: "Use {user.name} here"}
  - {id: b, type: approval, message: "Return JSON like {\\"x\\": 1}"}
""") == [
        "nodes[0].prompt: placeholder '{user.name}' at column 5: only plain names are allowed "
        "(no attribute or index access) (line 5)",
        "nodes[1].message: invalid placeholder '{\"x\": 1}' at column 18: expected a variable "
        "name (write '{{' and '}}' for literal braces) (line 6)",
    ]


def test_unsafe_condition_is_rejected_at_load() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: hi}
edges:
  - {from: a, to: END, when: "__import__('os').system('x')"}
""") == [
        "edges[0].when: function calls are not allowed: \"__import__('os').system('x')\" "
        "at column 1 (line 7)"
    ]


def test_a_bad_condition_or_template_does_not_hide_the_files_other_problems() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: "About {topc}"}
  - {id: b, type: llm, prompt: "Broken {"}
  - {id: c, type: llm, prompt: "{a}"}
edges:
  - {from: a, to: b, when: "len(a) > 1"}
  - {from: b, to: c}
  - {from: c, to: b}
""") == [
        "nodes[0].prompt: unknown variable 'topc' (line 5)",
        "nodes[1].prompt: unclosed '{' at column 8 (write '{{' for a literal brace) (line 6)",
        "edges[0].when: function calls are not allowed: 'len(a)' at column 1 (line 9)",
        "edges[1]: loop b -> c -> b never stops: none of its edges has 'when' or"
        " 'max_iterations' (line 10)",
    ]


def test_cycle_without_condition_never_stops() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: start, type: llm, prompt: go}
  - {id: a, type: llm, prompt: a}
  - {id: b, type: llm, prompt: b}
edges:
  - {from: start, to: a}
  - {from: a, to: b}
  - {from: b, to: a}
  - {from: b, to: END}
""") == [
        "edges[1]: loop a -> b -> a never stops: none of its edges has 'when' or "
        "'max_iterations' (line 10)"
    ]


def test_conditional_cycle_without_exit() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: start, type: llm, prompt: go, output: {n: integer}}
  - {id: a, type: llm, prompt: a}
  - {id: b, type: llm, prompt: b, output: {n: integer}}
edges:
  - {from: start, to: a}
  - {from: a, to: b}
  - {from: b, to: a, when: "n < 3"}
""") == [
        "edges[1]: loop through a, b has no exit: no edge leaves it and none of its edges has "
        "'max_iterations'; add an edge out of the loop (e.g. to END) or a limit (line 10)"
    ]


def test_no_entry_node_and_unreachable_node() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: a}
  - {id: b, type: llm, prompt: b}
edges:
  - {from: a, to: b, when: "true"}
  - {from: b, to: a, max_iterations: 2}
""") == [
        "edges: no entry node: every node has an incoming edge, so the run cannot start; "
        "at least one node must have no incoming edge (line 7)"
    ]
    assert errors_of("""\
name: t
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: a, type: llm, prompt: a}
  - {id: b, type: llm, prompt: b}
  - {id: c, type: llm, prompt: c}
edges:
  - {from: b, to: c, when: "true"}
  - {from: c, to: b, max_iterations: 2}
""") == [
        "nodes[1]: node 'b' can never run: it is not reachable from the entry nodes (a) (line 6)",
        "nodes[2]: node 'c' can never run: it is not reachable from the entry nodes (a) (line 7)",
    ]


def test_llm_node_needs_a_model_and_at_least_one_node() -> None:
    assert errors_of("name: t\nversion: 1\nnodes:\n  - {id: a, type: llm, prompt: hi}\n") == [
        "nodes[0].model: no model: set 'model' on the node or 'defaults.model' (line 4)"
    ]
    assert errors_of("name: t\nversion: 1\nnodes: []\n") == [
        "nodes: a workflow needs at least one node (line 3)"
    ]


def test_yaml_syntax_error_has_its_line() -> None:
    assert errors_of("name: t\nversion: 1\n  nodes: []\n") == [
        "invalid YAML: mapping values are not allowed here (line 3)"
    ]
    assert errors_of('{"name": "t",\n "version": 1,\n "nodes": [}\n') == [
        "invalid JSON: expected the node content, but found '}' (while parsing a flow node)"
        " (line 3)"
    ]
    assert errors_of("name: t\nname: u\n") == ['found duplicate key "name" (line 2)']
    assert errors_of("") == [
        "the file is empty; expected a mapping with name, version, nodes and edges"
    ]
    assert errors_of("- a\n- b\n") == [
        "expected a mapping with name, version, nodes and edges, got list (line 1)"
    ]


def test_invalid_utf8_names_the_byte_offset() -> None:
    source = b'name: t\nversion: 1\nnodes: [{id: a, type: llm, prompt: "caf\xe9"}]\n'

    assert source.index(b"\xe9") == 58
    assert errors_of(source) == ["invalid UTF-8 at byte offset 58 (line 3)"]


def test_huge_file_and_huge_string_are_refused_quickly() -> None:
    prompt = "x" * 5_000_000
    source = f"name: t\nversion: 1\nnodes: [{{id: a, type: llm, prompt: {prompt}}}]\n"

    assert errors_of(source) == [
        f"file is too large ({len(source)} bytes; the limit is 921600 bytes, 900 KiB)"
    ]
    with pytest.raises(SpecError) as caught:
        spec_from_dict(
            {
                "name": "t",
                "version": 1,
                "nodes": [
                    {"id": "a", "type": "llm", "model": "chiffon/echo", "prompt": prompt},
                ],
            }
        )
    assert str(caught.value) == (
        "nodes[0].prompt: string is too long (5000000 bytes; the limit is 64 KiB)"
    )


def test_string_over_64_kib_in_a_file() -> None:
    source = "name: t\nversion: 1\nnodes:\n  - id: a\n    type: llm\n    prompt: " + "y" * 70_000

    assert errors_of(source) == [
        "nodes[0].prompt: string is too long (70000 bytes; the limit is 64 KiB) (line 6)"
    ]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    assert errors_of("\n".join(lines)) == [
        "a4[7][8][8][8][9]: the document has more than 100000 values (alias expansion?) (line 1)"
    ]


def test_outputs_must_be_state_keys(article_writer: str) -> None:
    source = article_writer.replace("budget:", "outputs: [draft, scor]\nbudget:")

    assert errors_of(source) == [
        "outputs[1]: 'scor' is not a state key (did you mean 'score'?); "
        "outputs must name inputs or node output fields (line 5)"
    ]


def test_spec_from_dict_issues_have_no_line() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict({"name": "t", "version": 1, "nodes": [{"id": "a", "type": "robot"}]})

    assert [(i.path, i.line) for i in caught.value.issues] == [("nodes[0].type", None)]
    assert str(caught.value) == (
        "nodes[0].type: unknown node type 'robot'; allowed types: llm, approval, agent, set"
    )


def test_field_level_messages() -> None:
    assert errors_of("""\
name: t
version: 1
inputs:
  n: {type: integer, default: abc}
  class: {type: string}
nodes:
  - {id: a, type: llm, model: m, prompt: hi}
  - {id: b, type: agent, task: {cmd: "x"}, requires: [GPU]}
  - {id: c, type: set, values: {}}
edges:
  - {from: a, to: [b, c]}
""") == [
        "inputs.n: default does not match type: expected integer: should be a valid integer, "
        "unable to parse string as an integer (line 4)",
        "inputs.class: 'class' is a reserved word and cannot be a variable name (line 5)",
        "nodes[1].requires[0]: invalid capability 'GPU': use lowercase letters, digits, "
        "'_', '-' and '.' (line 8)",
        "nodes[2].values: must not be empty (line 9)",
        "edges[0].to: expected a string, got list; for fan-out write one edge per target (line 11)",
    ]


def test_start_and_end_are_not_nodes() -> None:
    assert errors_of("""\
name: t
version: 1
defaults: {model: m}
nodes:
  - {id: a, type: llm, prompt: hi}
edges:
  - {from: a, to: START}
  - {from: END, to: a}
""") == [
        "edges[0].to: START cannot be the target of an edge: it is where the run begins; "
        "to run a node again, point the edge at that node (line 7)",
        "edges[1].from: END cannot be the source of an edge (line 8)",
    ]


def test_json_errors_have_lines_too() -> None:
    source = """{
  "name": "t",
  "version": 1,
  "defaults": {"model": "chiffon/echo"},
  "nodes": [
    {"id": "a", "type": "llm", "prompt": "hi"}
  ],
  "edges": [
    {"from": "a", "to": "b"}
  ]
}"""
    assert errors_of(source) == ["edges[0].to: unknown node 'b' (line 9)"]
