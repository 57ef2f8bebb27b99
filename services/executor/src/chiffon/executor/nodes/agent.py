"""The ``agent`` node: one attempt of a task on an agent."""

from __future__ import annotations

from typing import Any

from chiffon.executor.nodes.context import Execution, NodeError
from chiffon.workflow import AgentNode, TemplateError, render_value


async def agent_attempt(ctx: Execution, node: AgentNode, state: dict[str, Any]) -> dict[str, Any]:
    try:
        render_value(node.task, state)
    except TemplateError as error:
        raise NodeError("template_error", f"{node.id}.task: {error}", retryable=False) from None
    # Agent dispatch (router + gRPC) comes with the agents service; until then no
    # agent can take the task.
    needed = ", ".join(node.requires)
    raise NodeError("no_agent", f"no agent available for capabilities [{needed}]")
