"""An audit record as text (a terminal) or as a self-contained HTML report.

The HTML report is one file an auditor can keep or mail: inline CSS, no script, no
external asset, and every string from the events escaped by Jinja2's autoescape (a node
output, a comment or a model name can hold any text a user or a model wrote).
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from chiffon.audit.record import AuditEntry, AuditRecord, summary

_ENV = Environment(
    loader=PackageLoader("chiffon.audit", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

# Text cells are cut so a 64 KiB output or message does not flood a terminal.
CELL_MAX_CHARS = 120


def _printable(value: Any, width: int = CELL_MAX_CHARS) -> str:
    """One line, control characters shown escaped (a terminal must not obey them)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    cleaned = "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text
    )
    return cleaned if len(cleaned) <= width else cleaned[: width - 1] + "…"


def describe(entry: AuditEntry) -> str:
    """What happened, in a few words, after the entry's type."""
    kind = entry["type"]
    parts: list[str] = []
    if kind == "run.requested":
        parts.append(f"{entry['workflow']} v{entry['version']} digest {entry['digest'][:12]}")
        if entry.get("key_id"):
            parts.append(f"key {entry['key_id']}")
        if entry.get("trigger"):
            trigger = entry["trigger"]
            parts.append(
                f"trigger {trigger['kind']}" + (f" {trigger['id']}" if trigger.get("id") else "")
            )
    if entry.get("model"):
        cost = entry["cost_usd"]
        parts.append(
            f"{entry['model']} {entry['tokens']} tokens "
            + (f"${cost}" if cost is not None else "cost unknown")
        )
    if "attempt" in entry and entry["attempt"] is not None:
        parts.append(f"attempt {entry['attempt']}")
    if "approved" in entry:
        parts.append("approved" if entry["approved"] else "rejected")
        if entry.get("comment"):
            parts.append(f"comment: {entry['comment']}")
    if entry.get("agent_id"):
        name = entry.get("agent_name")
        parts.append(
            f"agent {entry['agent_id']}"
            + (f" ({name})" if name and name != entry["agent_id"] else "")
        )
    if entry.get("tool"):
        parts.append(f"tool {entry['tool']}")
    error = entry.get("error")
    if isinstance(error, dict):
        parts.append(f"error {error['type']}: {error['message']}")
    elif isinstance(error, str):
        parts.append(f"error: {error}")
    if entry.get("reason"):
        parts.append(f"reason: {entry['reason']}")
    return _printable(", ".join(parts))


def to_text(record: AuditRecord) -> str:
    head = summary(record)
    lines = [
        f"run {head['run_id']}",
        f"  workflow   {head['workflow']} v{head['version']} (digest {head['digest']})",
        f"  started by {_printable(head['started_by'])}"
        + (f" with key {head['key_id']}" if head["key_id"] else "")
        + f" at {head['started_at']}",
        f"  ended      {head['ended'] or 'not yet'}"
        + (f" at {head['ended_at']}" if head["ended_at"] else ""),
        f"  models     {head['model_calls']} calls, {head['tokens']} tokens, "
        + (f"${head['cost_usd']}" if head["cost_usd"] is not None else "cost unknown")
        + (f" ({head['unpriced_calls']} not priced)" if head["unpriced_calls"] else ""),
        "",
        f"{'AT':<32} {'TYPE':<26} {'NODE':<20} {'ACTOR':<30} WHAT",
    ]
    for entry in record["timeline"]:
        lines.append(
            f"{entry['at']:<32} {entry['type']:<26} {_printable(entry['node_id'] or '-', 20):<20} "
            f"{_printable(entry['actor'], 30):<30} {describe(entry)}"
        )
    return "\n".join(lines) + "\n"


def to_json(record: AuditRecord) -> str:
    return json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"


def to_html(record: AuditRecord) -> str:
    template = _ENV.get_template("audit.html.j2")
    return template.render(
        record=record,
        head=summary(record),
        rows=[(entry, describe(entry)) for entry in record["timeline"]],
    )


RENDERERS = {"text": to_text, "json": to_json, "html": to_html}
FORMATS = tuple(RENDERERS)
