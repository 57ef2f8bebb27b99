import pytest

from chiffon.workflow import TemplateError, parse_template, render_value


def test_render_placeholders_and_literal_braces() -> None:
    template = parse_template('Facts: {facts}. Reply as {{"score": {n}}} for {topic}; ok={ok}')

    assert template.names == frozenset({"facts", "n", "topic", "ok"})
    assert template.render({"facts": ["a", "b"], "n": 7, "topic": "tea", "ok": True}) == (
        'Facts: ["a","b"]. Reply as {"score": 7} for tea; ok=True'
    )


def test_values_render_as_text_or_compact_json() -> None:
    template = parse_template("{s}|{i}|{f}|{none}|{obj}")

    assert template.render({"s": "x", "i": 3, "f": 0.5, "none": None, "obj": {"k": [1]}}) == (
        'x|3|0.5||{"k":[1]}'
    )
    assert parse_template("no placeholders {{}}").render({}) == "no placeholders {}"


def test_missing_value_at_render_time() -> None:
    with pytest.raises(TemplateError, match="unknown variable 'topic'"):
        parse_template("About {topic}").render({})


@pytest.mark.parametrize(
    ("src", "message"),
    [
        (
            "Hi {user.name}",
            "placeholder '{user.name}' at column 4: only plain names are allowed "
            "(no attribute or index access)",
        ),
        (
            "{items[0]}",
            "placeholder '{items[0]}' at column 1: only plain names are allowed "
            "(no attribute or index access)",
        ),
        ("empty {}", "empty placeholder '{}' at column 7 (write '{{' and '}}' for literal braces)"),
        (
            "{1}",
            "invalid placeholder '{1}' at column 1: expected a variable name "
            "(write '{{' and '}}' for literal braces)",
        ),
        ("{ name }", "placeholder '{ name }' at column 1 has spaces; write '{name}'"),
        ("open {name", "unclosed '{' at column 6 (write '{{' for a literal brace)"),
        ("a {b {c}", "unclosed '{' at column 3 (write '{{' for a literal brace)"),
        ("close }", "single '}' at column 7 (write '}}' for a literal brace)"),
        (
            "line one\n  {x:>10}",
            "invalid placeholder '{x:>10}' at line 2, column 3 of the text: "
            "expected a variable name (write '{{' and '}}' for literal braces)",
        ),
    ],
)
def test_malformed_templates(src: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template(src)
    assert str(caught.value) == message


def test_render_value_renders_nested_task_strings() -> None:
    task = {"tool": "shell", "command": "echo {msg}", "args": ["{n}", 3], "env": {"X": "{n}"}}

    assert render_value(task, {"msg": "hi", "n": 2}) == {
        "tool": "shell",
        "command": "echo hi",
        "args": ["2", 3],
        "env": {"X": "2"},
    }
