"""One node of a run: replayed from the run's events if it already ran, else run.

A node whose k-th execution is already completed in the events returns the recorded
outputs without running (durability by replay, see ``graph``); one that failed for good
fails again the same way. Otherwise its type's runner executes it, over the state and
the memory the node declares it reads (``memory.recall``); a completed execution then
writes the memory it declares (``memory.remember``, a no-op when it wrote already).
"""

from __future__ import annotations

from typing import Any

from chiffon.core.tracing import node_span
from chiffon.executor.domain import NodeIteration
from chiffon.executor.nodes.approval import run_approval
from chiffon.executor.nodes.context import Execution
from chiffon.executor.nodes.memory import recall, remember
from chiffon.executor.nodes.plan import NodePlan
from chiffon.executor.nodes.retry import STOPPING_SIGNALS, run_with_retries
from chiffon.executor.nodes.set_values import run_set
from chiffon.workflow import AgentNode, ApprovalNode, LlmNode, SetNode


async def execute_node(ctx: Execution, plan: NodePlan, state: dict[str, Any]) -> dict[str, Any]:
    node = plan.node
    iteration = ctx.next_iteration(node.id)
    recorded = ctx.run.nodes.get((node.id, iteration))
    if recorded is not None and recorded.completed is not None:
        outputs = await ctx.completed_outputs(recorded.completed)  # replay: never runs twice
        if node.memory is not None:
            await remember(ctx, plan, iteration, outputs)
        return outputs
    if recorded is not None and recorded.final_failure is not None:
        return plan.after_final_failure(recorded.final_failure.error)
    ctx.check_cancel()
    if node.memory is not None:
        state = {**state, **await recall(ctx, plan, iteration)}
    outputs = await _run(ctx, plan, state, iteration, recorded)
    if node.memory is not None:
        await remember(ctx, plan, iteration, outputs)
    return outputs


async def _run(
    ctx: Execution,
    plan: NodePlan,
    state: dict[str, Any],
    iteration: int,
    recorded: NodeIteration | None,
) -> dict[str, Any]:
    node = plan.node
    if isinstance(node, (SetNode, ApprovalNode)):
        # One attempt: its span here (an llm or agent node's attempts open their own).
        with node_span(node.id, node.type, 1, iteration, STOPPING_SIGNALS):
            if isinstance(node, SetNode):
                return await run_set(ctx, plan, node, state, iteration)
            return await run_approval(ctx, plan, node, state, iteration, recorded)
    assert isinstance(node, (LlmNode, AgentNode))
    return await run_with_retries(ctx, plan, node, state, iteration, recorded)
