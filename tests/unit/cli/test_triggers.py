"""How ``chiffon triggers`` and ``chiffon schedules`` read their arguments and print
answers: secrets only from an environment variable or stdin, input mappings and
``NAME@VERSION`` parsed or refused with a usage error, tables with stored strings
shown and never obeyed, next fire times listed."""

from __future__ import annotations

import io
from typing import Any

import pytest
import typer

from chiffon.cli import exit_codes as codes
from chiffon.cli.cost_cmd import render
from chiffon.cli.schedules_cmd import parse_inputs, schedules_table
from chiffon.cli.triggers_cmd import (
    describe,
    instant,
    parse_mapping,
    parse_target,
    secret_from,
    segment,
    triggers_table,
)

TRIGGER: dict[str, Any] = {
    "name": "gh-issues",
    "workflow": "triage",
    "version": None,
    "scheme": "standard-webhooks",
    "enabled": True,
    "secrets": 2,
    "inputs": {"title": "/issue/title"},
    "reply": None,
    "hook_path": "/hooks/gh-issues",
    "hook_url": "http://127.0.0.1:8403/hooks/gh-issues",
    "deliveries": 12,
    "last_delivery_at": "2026-12-07T10:00:01.5Z",
}


def exit_code(error: BaseException) -> int:
    assert isinstance(error, typer.Exit)
    return int(error.exit_code)


def test_a_secret_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "whsec_abc")
    assert secret_from("HOOK_SECRET", False) == "whsec_abc"
    assert secret_from(None, False) is None
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(typer.Exit) as unset:
        secret_from("HOOK_SECRET", False)
    assert exit_code(unset.value) == codes.USAGE


def test_a_secret_comes_from_stdin_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("whsec_from_pipe\nignored\n"))
    assert secret_from(None, True) == "whsec_from_pipe"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(typer.Exit) as empty:
        secret_from(None, True)
    assert exit_code(empty.value) == codes.USAGE
    with pytest.raises(typer.Exit) as both:
        secret_from("X", True)
    assert exit_code(both.value) == codes.USAGE


def test_no_command_takes_a_secret_as_an_argument() -> None:
    from typer.main import get_command

    from chiffon.cli.main import app

    group = get_command(app)
    for sub in ("triggers", "schedules"):
        commands = group.commands[sub].commands  # type: ignore[attr-defined]
        for command in commands.values():
            for param in command.params:
                names = " ".join(getattr(param, "opts", []))
                if "secret" in names or "token" in names:
                    assert names.endswith(("-env", "-stdin")), (command.name, names)


def test_input_mappings_and_targets() -> None:
    assert parse_mapping(["title=/issue/title", "who=header:x-user", "q=/a=b"]) == {
        "title": "/issue/title",
        "who": "header:x-user",
        "q": "/a=b",
    }
    for bad in (["title"], ["=/x"], ["title="]):
        with pytest.raises(typer.Exit) as refused:
            parse_mapping(bad)
        assert exit_code(refused.value) == codes.USAGE
    assert parse_target("triage") == ("triage", None)
    assert parse_target("triage@3") == ("triage", 3)
    for bad in ("triage@", "triage@x", "triage@0"):
        with pytest.raises(typer.Exit):
            parse_target(bad)


def test_replay_bounds_take_a_date_as_its_start_in_utc() -> None:
    assert instant("2026-12-01") == "2026-12-01T00:00:00Z"
    assert instant(" 2026-12-01T08:00:00+01:00 ") == "2026-12-01T08:00:00+01:00"
    assert instant(None) is None


def test_schedule_inputs_are_json_when_they_are_json() -> None:
    assert parse_inputs(["topic=owls", "n=3", 'tags=["a"]', "flag=true", "s="]) == {
        "topic": "owls",
        "n": 3,
        "tags": ["a"],
        "flag": True,
        "s": "",
    }
    with pytest.raises(typer.Exit):
        parse_inputs(["novalue"])


def test_a_name_cannot_reach_another_route() -> None:
    assert segment("../keys") == "..%2Fkeys"
    assert segment("a?b#c") == "a%3Fb%23c"


def test_triggers_table_shows_state_and_hook_and_never_obeys_stored_text() -> None:
    hostile = {**TRIGGER, "name": "[bold]x[/]", "workflow": "w\rFORGED", "enabled": False}
    off = {**TRIGGER, "name": "quiet", "secrets": 0}
    text = render(triggers_table([TRIGGER, hostile, off]), color=False)
    assert "gh-issues" in text and "http://127.0.0.1:8403/hooks/gh-issues" in text
    assert "enabled" in text and "disabled" in text and "off (no secret)" in text
    assert "2026-12-07 10:00:01" in text and "12" in text
    assert "[bold]x[/]" in text and "w\\rFORGED" in text and "\r" not in text


def test_show_names_the_hook_base_and_no_secret() -> None:
    text = describe({**TRIGGER, "reply": {"output": "answer"}})
    assert "hook URL  http://127.0.0.1:8403/hooks/gh-issues" in text
    assert "hook base http://127.0.0.1:8403/hooks/" in text
    assert "title <- /issue/title" in text and "output answer" in text
    assert "2 active secret(s)" in text


def test_schedules_list_shows_next_fire_times() -> None:
    schedules = [
        {
            "name": "nightly",
            "workflow": "report",
            "version": 2,
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "paused": False,
            "next_fire_times": [
                "2026-12-08T01:30:00Z",
                "2026-12-09T01:30:00Z",
                "2026-12-10T01:30:00Z",
                "2026-12-11T01:30:00Z",
            ],
            "last_run_id": "r-1",
            "last_fired_at": "2026-12-07T01:30:00Z",
        },
        {
            "name": "held",
            "workflow": "report",
            "cron": "* * * * *",
            "timezone": "UTC",
            "paused": True,
            "next_fire_times": [],
        },
    ]
    text = render(schedules_table(schedules), color=False)
    assert "2026-12-08 01:30:00" in text and "2026-12-10 01:30:00" in text
    assert "2026-12-11" not in text  # the next three only
    # One time a line, not one line with escaped breaks.
    assert "\\n" not in text
    lines = text.splitlines()
    for upcoming in ("2026-12-08 01:30:00", "2026-12-09 01:30:00", "2026-12-10 01:30:00"):
        assert sum(upcoming in line for line in lines) == 1
    assert "report v2" in text and "Europe/Berlin" in text and "r-1" in text
    assert "(paused)" in text and "paused" in text
