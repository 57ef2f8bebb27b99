"""The sql tool: queries in a read-only transaction against a configured database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chiffon.agent.tools.base import Tool

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings


def build(settings: AgentSettings) -> Tool | None:
    """The sql tool for these settings (None until it is built)."""
    return None
