"""The agent's tools by name, built from its settings: only the capabilities it offers.

The shell tool is the runtime's own (chiffon.agent.shell); every other tool is built
here. A capability with no tool behind it (gpu, a label-like capability) builds nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chiffon.agent.tools import (
    ansible_tool,
    catalog_tool,
    files_tool,
    http_tool,
    python_tool,
    sql_tool,
)
from chiffon.agent.tools.base import Tool

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings

_BUILDERS = {
    "python": python_tool.build,
    "files": files_tool.build,
    "http": http_tool.build,
    "sql": sql_tool.build,
    "ansible": ansible_tool.build,
    "catalog": catalog_tool.build,
}


def build_tools(settings: AgentSettings) -> dict[str, Tool]:
    """The tools for the capabilities this agent offers (shell excluded)."""
    tools: dict[str, Tool] = {}
    for capability in settings.capabilities:
        builder = _BUILDERS.get(capability)
        if builder is None:
            continue
        tool = builder(settings)
        if tool is not None:
            tools[capability] = tool
    return tools
