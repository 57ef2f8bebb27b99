"""The python tool: code runs in a subprocess fenced by rlimits, a scratch directory, an empty environment and (by default) no network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chiffon.agent.tools.base import Tool

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings


def build(settings: AgentSettings) -> Tool | None:
    """The python tool for these settings (None until it is built)."""
    return None
