"""The ``approval`` node: asks a human, waits for the decision (the run may suspend)."""

from __future__ import annotations

import time
from typing import Any

from chiffon.events.runs import ApprovalRequested, NodeStarted
from chiffon.executor.domain import NodeIteration
from chiffon.executor.nodes.context import (
    Execution,
    NodeFailure,
    error_info,
    storable_completion,
    storable_text,
)
from chiffon.executor.nodes.plan import NodePlan
from chiffon.workflow import ApprovalNode, TemplateError


async def run_approval(
    ctx: Execution,
    plan: NodePlan,
    node: ApprovalNode,
    state: dict[str, Any],
    iteration: int,
    recorded: NodeIteration | None,
) -> dict[str, Any]:
    if recorded is None or not recorded.started:
        try:
            message = plan.templates["message"].render(state)
        except TemplateError as error:
            raise NodeFailure(
                error_info("template_error", f"{node.id}.message: {error}", node.id)
            ) from None
        await ctx.append(
            [
                NodeStarted(node_id=node.id, node_type="approval", attempt=1, iteration=iteration),
                ApprovalRequested(
                    node_id=node.id, message=storable_text(message[:65_536]), iteration=iteration
                ),
            ]
        )
    started = time.perf_counter()
    decision, _by = await ctx.wait_approval(node.id, iteration)
    outputs = {"approved": decision.approved, "approval_comment": decision.comment}
    completed, outputs = await storable_completion(
        ctx, node.id, 1, iteration, outputs, (time.perf_counter() - started) * 1000
    )
    await ctx.append([completed], check_cancel=False)
    return outputs
