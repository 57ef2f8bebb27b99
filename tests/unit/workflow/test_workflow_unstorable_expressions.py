"""A ``set`` expression or an edge condition whose string constant holds a NUL or a lone
surrogate is refused when the workflow is loaded (issue 16).

The text of ``'\\0'`` holds no NUL, so the check on the document's text let it through;
the executor then recorded the value and PostgreSQL refused it, stopping the runs read
model for everyone. The constants of the parsed expression are checked instead.
"""

from __future__ import annotations

import pytest

from chiffon.workflow import SpecError, load_spec

NUL = "a string constant contains a NUL character"
SURROGATE = "a string constant contains a lone surrogate (U+D800)"


def workflow(value: str, when: str = "true") -> str:
    # YAML single quotes keep every backslash as written: the expression's own escape.
    quoted = value.replace("'", "''")
    when_quoted = when.replace("'", "''")
    return (
        "name: w\nversion: 1\nnodes:\n"
        f"  - {{id: a, type: set, values: {{v: '{quoted}'}}}}\n"
        "  - {id: b, type: set, values: {w: '1'}}\n"
        f"edges:\n  - {{from: a, to: b, when: '{when_quoted}'}}\n"
    )


def issues_of(source: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(SpecError) as caught:
        load_spec(source)
    return [(i.path, i.line, i.message) for i in caught.value.issues]


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        (r'"\N{NULL}"', NUL),
        (r"'\x00'", NUL),
        (r"'\0'", NUL),
        (r"'\U00000000'", NUL),
        (r"'a\000b'", NUL),
        (r"'ok' + '\ud800'", SURROGATE),
        (r"{'k\0': 1}", NUL),
        (r"['x', '\ud800']", SURROGATE),
    ],
)
def test_a_set_expression_with_a_nul_or_surrogate_constant_is_a_spec_issue(
    expression: str, reason: str
) -> None:
    issues = issues_of(workflow(expression))

    assert [(path, line) for path, line, _ in issues] == [("nodes[0].values.v", 4)], issues
    assert reason in issues[0][2]
    issues[0][2].encode("utf-8")  # the report names the character, it does not hold it


@pytest.mark.parametrize(
    ("expression", "reason"), [(r"v == '\0'", NUL), (r"v != '\ud800'", SURROGATE)]
)
def test_an_edge_condition_with_a_nul_or_surrogate_constant_is_a_spec_issue(
    expression: str, reason: str
) -> None:
    issues = issues_of(workflow("'x'", when=expression))

    assert [(path, line) for path, line, _ in issues] == [("edges[0].when", 7)], issues
    assert reason in issues[0][2]


def test_escapes_of_storable_characters_still_load() -> None:
    spec = load_spec(workflow(r"'tab\there, \N{BULLET} \u00e9 \x01'"))
    assert spec.nodes[0].id == "a"
