"""``chiffon fork``'s checks of its prompt file: a precise message and exit 2 before
anything is sent (no gateway is configured here: nothing could be)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chiffon.cli.main import app
from chiffon.events.limits import SPEC_STRING_MAX_BYTES

NO_GATEWAY = {"CHIFFON_GATEWAY_URL": "", "CHIFFON_API_KEY": "", "CHIFFON_CONFIG": "/nonexistent"}


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it (No such file or directory)"),
        (b"\xff\xfe bad", "not UTF-8 text (byte 0)"),
        (b"  \n", "the file is empty"),
        (b"a\x00b", "contains a NUL character"),
        (
            b"x" * (SPEC_STRING_MAX_BYTES + 1),
            f"{SPEC_STRING_MAX_BYTES + 1} bytes; a prompt is at most {SPEC_STRING_MAX_BYTES} bytes",
        ),
    ],
)
def test_an_unusable_prompt_file_is_refused_before_anything_is_sent(
    tmp_path: Path, content: bytes | None, says: str
) -> None:
    path = tmp_path / "prompt.txt"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(
        app, ["fork", "run-1", "--at", "n3", "--prompt-file", str(path)], env=NO_GATEWAY
    )
    assert result.exit_code == 2
    assert f"error: --prompt-file '{path}': {says}" in result.output


def test_a_folder_is_not_a_prompt_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["fork", "run-1", "--at", "n3", "--prompt-file", str(tmp_path)], env=NO_GATEWAY
    )
    assert result.exit_code == 2 and "cannot read it (Is a directory)" in result.output


def test_a_malformed_input_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["fork", "run-1", "--at", "n3", "-i", "novalue"], env=NO_GATEWAY
    )
    assert result.exit_code == 2 and "expected KEY=VALUE" in result.output
