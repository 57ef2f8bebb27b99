"""The ansible tool: a playbook from the agent's catalog, run by ansible-runner, its lines streamed, lint advice on failure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chiffon.agent.tools.base import Tool

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings


def build(settings: AgentSettings) -> Tool | None:
    """The ansible tool for these settings (None until it is built)."""
    return None
