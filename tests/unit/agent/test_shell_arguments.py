"""The shell tool's arguments: allow-listed argv, never a shell, no agent secrets in env."""

from __future__ import annotations

from typing import Any

import pytest

from chiffon.agent.settings import DEFAULT_ALLOW
from chiffon.agent.shell import ShellCommand, ToolRefused, parse_shell_arguments


def _parse(**arguments: Any) -> ShellCommand:
    return parse_shell_arguments(
        arguments, allow=DEFAULT_ALLOW, default_timeout=300.0, max_timeout=3600.0
    )


def _refused(**arguments: Any) -> str:
    with pytest.raises(ToolRefused) as caught:
        _parse(**arguments)
    return caught.value.error_type


def test_a_string_is_split_into_words_never_interpreted() -> None:
    command = _parse(command='echo "a; rm -rf /" $HOME')
    assert command.argv == ("echo", "a; rm -rf /", "$HOME")
    assert command.executable.endswith("/echo")


def test_a_list_is_argv() -> None:
    assert _parse(command=["printf", "%s", "; ls"]).argv == ("printf", "%s", "; ls")


@pytest.mark.parametrize(
    "command", ["rm -rf /", "sh -c 'echo'", "/bin/echo hi", "./echo", "cat /etc/shadow", "bash"]
)
def test_commands_off_the_allow_list_are_not_allowed(command: str) -> None:
    assert _refused(command=command) == "not_allowed"


def test_an_exact_path_is_allowed_only_when_listed() -> None:
    command = parse_shell_arguments(
        {"command": "/bin/echo hi"}, allow=("/bin/echo",), default_timeout=1, max_timeout=2
    )
    assert command.executable == "/bin/echo"


@pytest.mark.parametrize(
    "arguments",
    [
        {"command": ""},
        {"command": []},
        {"command": 'echo "unclosed'},
        {"command": 42},
        {"command": ["echo", 1]},
        {"command": "echo a\x00b"},
        {"command": "echo", "unknown": 1},
        {"command": "echo", "env": {"A": 1}},
        {"command": "echo", "timeout_seconds": 0},
        {"command": "echo", "timeout_seconds": 7200},
        {"command": "echo", "timeout_seconds": True},
        {"command": "echo", "cwd": ""},
    ],
)
def test_malformed_arguments_are_invalid(arguments: dict[str, Any]) -> None:
    assert _refused(**arguments) == "invalid_arguments"


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "ld_library_path", "BASH_ENV"])
def test_a_task_cannot_set_variables_that_change_what_runs(name: str) -> None:
    assert _refused(command="echo", env={name: "x"}) == "not_allowed"


def test_timeouts_default_and_come_from_the_request() -> None:
    assert _parse(command="true").timeout == 300.0
    assert _parse(command="true", timeout_seconds=2).timeout == 2.0
    request = parse_shell_arguments(
        {"command": "true"},
        allow=DEFAULT_ALLOW,
        default_timeout=300,
        max_timeout=3600,
        request_timeout=7.5,
    )
    assert request.timeout == 7.5
