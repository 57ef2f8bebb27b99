"""The audit record as a terminal's text and as a self-contained HTML report."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from chiffon.audit.record import audit_record
from chiffon.audit.render import to_html, to_json, to_text

from .sample import run_events


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.css = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes |= {name for name, _ in attrs}
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.css += data
            self._in_style = False


HOSTILE = '<script>alert("x")</script><img src=https://evil.example/x.png>\x1b[31m'


def test_html_is_self_contained_and_escapes_every_string() -> None:
    record = audit_record("run-h", run_events("run-h", comment=HOSTILE, workflow="deploy-kuma"))
    html = to_html(record)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    parsed = _Tags()
    parsed.feed(html)
    # No script, no image, no link: nothing is loaded from anywhere; the CSS is inline.
    assert not parsed.tags & {"script", "img", "link", "iframe", "object"}
    assert not parsed.attributes & {"src", "href", "srcset", "onerror", "onload"}
    assert "url(" not in parsed.css and "@import" not in parsed.css and "td {" in parsed.css
    assert "api_key:key-7f3a" in html and "openai/gpt-4o-mini" in html and "agent-homelab-1" in html


def test_text_names_the_starter_the_version_and_each_event_without_obeying_control_characters() -> (
    None
):
    events = run_events("run-t", comment=HOSTILE)
    text = to_text(audit_record("run-t", events))
    assert "api_key:key-7f3a with key key-7f3a" in text
    assert "deploy-kuma v3" in text
    assert "\x1b" not in text and "\\x1b[31m" in text
    lines = [line for line in text.splitlines() if line.startswith("2026-")]
    assert len(lines) == len(events)
    assert "approved, comment: <script>" in text


def test_json_is_the_record() -> None:
    record = audit_record("run-j", run_events("run-j"))
    assert json.loads(to_json(record)) == record
