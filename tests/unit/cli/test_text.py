"""The CLI prints stored strings escaped: nothing a model, a tool or a user wrote can
move the cursor, recolour the terminal, overwrite a line or reverse the text."""

from __future__ import annotations

import json

import pytest

from chiffon.cli.text import echo, printable


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("plain words", "plain words"),
        ("naïve café 日本", "naïve café 日本"),
        ("ok\rFORGED", "ok\\rFORGED"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("bell\x07", "bell\\x07"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("line\u2028break", "line\\u2028break"),
        ("lone \ud800", "lone \\ud800"),
    ],
)
def test_printable_escapes_what_could_forge_or_restyle_a_line(stored: str, shown: str) -> None:
    assert printable(stored) == shown


def test_echo_keeps_the_clis_own_lines_and_json_stays_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = json.dumps({"answer": "a\x1bb\u202e"}, ensure_ascii=False, indent=2)
    echo(document)
    printed = capsys.readouterr().out
    assert printed.count("\n") == document.count("\n") + 1
    assert "\x1b" not in printed and "\u202e" not in printed
    assert json.loads(printed) == {"answer": "a\x1bb\u202e"}
