"""ansible-lint's findings grouped and ranked; the outcome of a play killed by a signal
from its recap; per-host counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chiffon.agent.tools.ansible_tool import _hosts, play_outcome
from chiffon.agent.tools.lint_advice import MAX_FINDINGS, group_findings, group_of


def _issue(rule: str, tags: list[str], line: int, severity: str = "major") -> dict[str, Any]:
    return {
        "check_name": rule,
        "categories": tags,
        "severity": severity,
        "description": f"about {rule}",
        "url": f"https://example.invalid/{rule}",
        "location": {"path": "/cat/playbooks/p.yml", "lines": {"begin": line}},
    }


def test_rules_and_tags_map_to_the_five_groups() -> None:
    assert group_of("ignore-errors", ["unpredictability"]) == "error handling"
    assert group_of("no-changed-when", ["command-shell", "idempotency"]) == "idempotency"
    assert group_of("latest[git]", ["idempotency"]) == "idempotency"
    assert group_of("command-instead-of-shell", ["command-shell"]) == "performance"
    assert group_of("risky-file-permissions", ["unpredictability"]) == "best practices"
    assert group_of("deprecated-module", ["deprecations"]) == "best practices"
    assert group_of("some-new-rule", ["security"]) == "best practices"
    assert group_of("fqcn[action-core]", ["formatting"]) == "standards"
    assert group_of("name[casing]", ["idiom"]) == "standards"


def test_the_most_severe_come_first_and_groups_follow_their_first_finding() -> None:
    issues = [
        _issue("fqcn[action-core]", ["formatting"], 3),
        _issue("no-changed-when", ["idempotency"], 9),
        _issue("name[casing]", ["idiom"], 1, severity="minor"),
        _issue("ignore-errors", ["unpredictability"], 12),
        _issue("syntax-check[specific]", ["core"], 20),
        {"not": "an issue"},
    ]
    advice = group_findings(issues, Path("/cat"))

    assert advice["total"] == advice["shown"] == 5
    assert [g["name"] for g in advice["groups"]] == ["error handling", "idempotency", "standards"]
    handling = advice["groups"][0]["findings"]
    assert [f["rule"] for f in handling] == ["syntax-check[specific]", "ignore-errors"]
    assert handling[0]["severity"] == "blocker"
    standards = advice["groups"][2]["findings"]
    assert [f["rule"] for f in standards] == ["fqcn[action-core]", "name[casing]"]
    assert standards[0] == {
        "rule": "fqcn[action-core]",
        "group": "standards",
        "severity": "major",
        "message": "about fqcn[action-core]",
        "file": "playbooks/p.yml",
        "line": 3,
        "url": "https://example.invalid/fqcn[action-core]",
    }


def test_at_most_fifty_findings_are_returned_and_the_total_says_how_many() -> None:
    issues = [_issue("name[casing]", ["idiom"], n, severity="minor") for n in range(70)]
    issues.append(_issue("ignore-errors", [], 99))
    advice = group_findings(issues, Path("/cat"))
    assert advice["total"] == 71 and advice["shown"] == MAX_FINDINGS
    assert advice["groups"][0]["findings"][0]["rule"] == "ignore-errors"


def test_not_a_list_is_an_error_not_a_crash() -> None:
    assert "error" in group_findings({"x": 1}, Path("/cat"))


def test_a_play_killed_by_a_signal_is_judged_by_its_recap() -> None:
    clean = {"ok": {"h": 3}, "failures": {}, "dark": {}}
    assert play_outcome("failed", None, clean) == ("successful", 0)
    assert play_outcome("failed", None, {"failures": {"h": 1}}) == ("failed", 2)
    assert play_outcome("failed", None, {"dark": {"h": 1}}) == ("failed", 4)
    assert play_outcome("failed", None, {}) == ("failed", -1)
    assert play_outcome("failed", 2, clean) == ("failed", 2)
    assert play_outcome("successful", 0, clean) == ("successful", 0)


def test_per_host_counts_from_the_recap() -> None:
    stats = {
        "ok": {"a": 4, "b": 1},
        "changed": {"a": 2},
        "failures": {"b": 1},
        "dark": {"c": 1},
        "skipped": {"a": 1},
    }
    assert _hosts(stats) == {
        "a": {"ok": 4, "changed": 2, "failed": 0, "unreachable": 0, "skipped": 1},
        "b": {"ok": 1, "changed": 0, "failed": 1, "unreachable": 0, "skipped": 0},
        "c": {"ok": 0, "changed": 0, "failed": 0, "unreachable": 1, "skipped": 0},
    }
