"""Advice for a failed play: ansible-lint's findings on the playbook, grouped and ranked.

`ansible-lint -f json` (Code Climate JSON) runs as a subprocess with a time cap (it takes
about 8 s on a small playbook on the shared 2-core machine, most of it loading Ansible),
offline (it installs nothing and fetches no schema) and with an environment holding none of
the agent's settings. Its findings are grouped by rule (then, for a rule not listed, by its
tags, which Code Climate calls categories):

| group          | rules                                                                    |
| -------------- | ------------------------------------------------------------------------ |
| error handling | ignore-errors, risky-shell-pipe, no-handler, partial-become, syntax-check, load-failure, parser-error, internal-error |
| idempotency    | no-changed-when, package-latest, latest, command-instead-of-module; tag `idempotency` |
| performance    | command-instead-of-shell, run-once, complexity, loop                     |
| best practices | risky-file-permissions, risky-octal, no-free-form, no-relative-paths, no-log-password, inline-env-var, avoid-implicit, literal-compare, deprecated-*, args; tags `unpredictability`, `security`, `deprecations`, `risk`, `command-shell` |
| standards      | everything else: fqcn, name, yaml, jinja, key-order, schema, var-naming, role-name, meta-*, galaxy; tags `formatting`, `idiom`, `yaml`, `syntax`, `metadata`, `core` |

Most severe first: a finding that stopped the linter from reading the file (syntax-check,
load-failure, parser-error, internal-error) is `blocker`; then Code Climate's `major`
(ansible-lint's errors) before `minor` (its warnings); ties in the order of the groups above,
then by file and line. At most MAX_FINDINGS are returned; `total` says how many there were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_FINDINGS = 50
MAX_LINT_OUTPUT_BYTES = 8 << 20
GROUPS = ("error handling", "idempotency", "performance", "best practices", "standards")
_FATAL = frozenset({"syntax-check", "load-failure", "parser-error", "internal-error"})
_BY_RULE = {
    "ignore-errors": "error handling",
    "risky-shell-pipe": "error handling",
    "no-handler": "error handling",
    "partial-become": "error handling",
    **{rule: "error handling" for rule in _FATAL},
    "no-changed-when": "idempotency",
    "package-latest": "idempotency",
    "latest": "idempotency",
    "command-instead-of-module": "idempotency",
    "command-instead-of-shell": "performance",
    "run-once": "performance",
    "complexity": "performance",
    "loop": "performance",
    "risky-file-permissions": "best practices",
    "risky-octal": "best practices",
    "no-free-form": "best practices",
    "no-relative-paths": "best practices",
    "no-log-password": "best practices",
    "inline-env-var": "best practices",
    "avoid-implicit": "best practices",
    "literal-compare": "best practices",
    "args": "best practices",
}
_BY_TAG = {
    "idempotency": "idempotency",
    "unpredictability": "best practices",
    "security": "best practices",
    "deprecations": "best practices",
    "risk": "best practices",
    "command-shell": "best practices",
}
_SEVERITY_RANK = {"blocker": 0, "critical": 1, "major": 2, "minor": 3, "info": 4}


@dataclass(frozen=True)
class LintRun:
    """How to run ansible-lint: its executable, where, with what environment, for how long."""

    executable: str
    cwd: Path
    env: Mapping[str, str]
    timeout: float


def group_of(rule: str, tags: list[str]) -> str:
    base = rule.split("[", 1)[0]
    if base in _BY_RULE:
        return _BY_RULE[base]
    if base.startswith("deprecated-"):
        return "best practices"
    for tag in tags:
        if tag in _BY_TAG:
            return _BY_TAG[tag]
    return "standards"


def _finding(issue: Mapping[str, Any], root: Path) -> dict[str, Any] | None:
    rule = issue.get("check_name")
    if not isinstance(rule, str):
        return None
    raw_tags = issue.get("categories")
    tags = [tag for tag in raw_tags if isinstance(tag, str)] if isinstance(raw_tags, list) else []
    raw_location = issue.get("location")
    location: Mapping[str, Any] = raw_location if isinstance(raw_location, Mapping) else {}
    lines = location.get("lines") or {}
    positions = location.get("positions") or {}
    line = (lines.get("begin") if isinstance(lines, Mapping) else None) or (
        positions.get("begin", {}).get("line") if isinstance(positions, Mapping) else None
    )
    path = str(location.get("path") or "")
    with contextlib.suppress(ValueError):
        path = str(Path(path).resolve().relative_to(root.resolve())) if path else path
    base = rule.split("[", 1)[0]
    severity = "blocker" if base in _FATAL else str(issue.get("severity") or "major")
    return {
        "rule": rule,
        "group": group_of(rule, tags),
        "severity": severity,
        "message": str(issue.get("description") or "")[:500],
        "file": path,
        "line": line if isinstance(line, int) else None,
        "url": str(issue.get("url") or ""),
    }


def group_findings(issues: object, root: Path) -> dict[str, Any]:
    """`{total, shown, groups: [{name, findings: [...]}, ...]}`: the most severe first, at
    most MAX_FINDINGS over all groups; groups in the order of their most severe finding."""
    if not isinstance(issues, list):
        return {"error": "ansible-lint did not answer a list of findings", "total": 0, "groups": []}
    findings = [f for issue in issues if isinstance(issue, Mapping) if (f := _finding(issue, root))]
    findings.sort(
        key=lambda f: (
            _SEVERITY_RANK.get(f["severity"], len(_SEVERITY_RANK)),
            GROUPS.index(f["group"]),
            f["file"],
            f["line"] or 0,
        )
    )
    shown = findings[:MAX_FINDINGS]
    groups: dict[str, list[dict[str, Any]]] = {}
    for finding in shown:
        groups.setdefault(finding["group"], []).append(finding)
    # A list, not an object: the result travels as a protobuf Struct, whose objects keep no order.
    ordered = [{"name": name, "findings": items} for name, items in groups.items()]
    return {"total": len(findings), "shown": len(shown), "groups": ordered}


async def lint_advice(playbook: Path, run: LintRun) -> dict[str, Any]:
    """ansible-lint's advice on `playbook`, or `{error}` saying why there is none."""
    argv = [run.executable, "--offline", "--nocolor", "-f", "json", "-q", str(playbook)]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=run.cwd,
            env=dict(run.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as error:
        return {"error": f"ansible-lint could not start: {error}", "total": 0, "groups": []}
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), run.timeout)
    except TimeoutError:
        await _kill(process)
        return {
            "error": f"ansible-lint took longer than {run.timeout:g} s",
            "total": 0,
            "groups": [],
        }
    except asyncio.CancelledError:
        await _kill(process)
        raise
    # ansible-lint exits 2 when it found something, 0 when not; anything else is its own failure.
    if process.returncode not in (0, 2):
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        return {
            "error": f"ansible-lint exited with {process.returncode}: {' '.join(tail)[:500]}",
            "total": 0,
            "groups": [],
        }
    try:
        issues = json.loads(stdout[:MAX_LINT_OUTPUT_BYTES] or b"[]")
    except ValueError:
        return {"error": "ansible-lint's output is not JSON", "total": 0, "groups": []}
    return group_findings(issues, run.cwd)


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
