"""The ``set`` node: computes state values from expressions, in this process."""

from __future__ import annotations

import json
import time
from typing import Any

from chiffon.events.runs import NodeFailed, NodeStarted
from chiffon.executor.nodes.context import (
    Execution,
    NodeFailure,
    error_info,
    storable_completion,
)
from chiffon.executor.nodes.plan import NodePlan
from chiffon.workflow import ExpressionError, SetNode


async def run_set(
    ctx: Execution, plan: NodePlan, node: SetNode, state: dict[str, Any], iteration: int
) -> dict[str, Any]:
    # Stored with the outcome, but dated when the node started.
    node_started = ctx.event(
        NodeStarted(node_id=node.id, node_type="set", attempt=1, iteration=iteration)
    )
    started = time.perf_counter()
    outputs: dict[str, Any] = {}
    try:
        for key, expression in plan.set_expressions.items():
            outputs[key] = expression.evaluate(state)
        json.dumps(outputs)
    except (ExpressionError, TypeError, ValueError) as error:
        info = error_info("expression_error", f"{node.id}: {error}", node.id)
        await ctx.append(
            [
                node_started,
                NodeFailed(
                    node_id=node.id,
                    attempt=1,
                    iteration=iteration,
                    error=info,
                    will_retry=False,
                    duration_ms=0.0,
                ),
            ]
        )
        raise NodeFailure(info) from None
    duration = (time.perf_counter() - started) * 1000
    completed, outputs = await storable_completion(ctx, node.id, 1, iteration, outputs, duration)
    await ctx.append([node_started, completed])
    return outputs
