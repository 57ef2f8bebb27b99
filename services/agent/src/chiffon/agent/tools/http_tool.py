"""The http tool: requests to allow-listed hosts, never to loopback, private, link-local or metadata addresses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chiffon.agent.tools.base import Tool

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings


def build(settings: AgentSettings) -> Tool | None:
    """The http tool for these settings (None until it is built)."""
    return None
