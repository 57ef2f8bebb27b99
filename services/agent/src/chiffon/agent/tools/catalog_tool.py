"""The catalog tool: search the agent's playbook catalog (names and tags, then embeddings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chiffon.agent.tools.base import Tool

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings


def build(settings: AgentSettings) -> Tool | None:
    """The catalog tool for these settings (None until it is built)."""
    return None
