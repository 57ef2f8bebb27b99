"""The one retry policy of the executor: a node's attempts, with its backoff.

Exactly one layer retries (model calls are made with ``num_retries=0``): an attempt of
an llm or agent node that fails with a retryable error is recorded (``run.node.failed``,
``will_retry``) and run again after the node's backoff, or after the wait the provider
asked for (``Retry-After``) if that is longer, until ``attempts`` are spent. An error no
retry can cure (a bad key, a bad request, a template error) fails the node at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from chiffon.core.tracing import failed, node_span
from chiffon.events.runs import LlmCalled, NodeFailed, NodeStarted
from chiffon.executor.domain import INTERRUPTED, NodeIteration
from chiffon.executor.nodes.agent import agent_attempt
from chiffon.executor.nodes.context import (
    BudgetPause,
    CapacityPause,
    Execution,
    NodeError,
    RunCancelledSignal,
    error_info,
    storable_completion,
)
from chiffon.executor.nodes.llm import llm_attempt
from chiffon.executor.nodes.plan import NodePlan
from chiffon.workflow import AgentNode, LlmNode, RetryPolicy

# What stops a node's attempt on purpose: its span ends without being a failure.
STOPPING_SIGNALS = (RunCancelledSignal, CapacityPause, BudgetPause)


def retry_delay(policy: RetryPolicy, failures: int, retry_after: float | None) -> float:
    """Seconds before the next attempt: the node's backoff for this retry, or the wait
    the provider asked for (already capped, ``provider_errors.MAX_RETRY_AFTER_S``) when
    that is longer."""
    delay = policy.delay(failures)
    if retry_after is not None and retry_after > delay:
        return retry_after
    return delay


async def run_with_retries(
    ctx: Execution,
    plan: NodePlan,
    node: LlmNode | AgentNode,
    state: dict[str, Any],
    iteration: int,
    recorded: NodeIteration | None,
) -> dict[str, Any]:
    policy = plan.retry
    timeout = plan.timeout
    failures = recorded.retry_failures if recorded else 0
    attempt = (len(recorded.started) if recorded else 0) + 1
    pending: list[Any] = []
    if recorded is not None and recorded.open_attempt is not None:
        # The replica that ran this attempt stopped before recording its outcome.
        pending.append(
            NodeFailed(
                node_id=node.id,
                attempt=recorded.open_attempt,
                iteration=iteration,
                error=error_info(
                    INTERRUPTED,
                    "the executor running this attempt stopped; the node runs again",
                    node.id,
                ),
                will_retry=True,
                duration_ms=0.0,
            )
        )
    # A node whose every model is the in-process offline one calls nothing outside this
    # process: its start is recorded with its outcome, in one append. Were the replica
    # to die in between, nothing was recorded and the node runs again, to the same end.
    start_with_outcome = isinstance(node, LlmNode) and all(
        model and ctx.llm.in_process(model) for model in plan.models
    )
    while True:
        with node_span(node.id, node.type, attempt, iteration, STOPPING_SIGNALS) as span:
            started_event = NodeStarted(
                node_id=node.id, node_type=node.type, attempt=attempt, iteration=iteration
            )
            if start_with_outcome:
                ctx.check_cancel()
                pending.append(ctx.event(started_event))  # dated now, appended with the outcome
            else:
                await ctx.append([*pending, started_event])
                pending = []
            calls: list[LlmCalled] = []
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    if isinstance(node, LlmNode):
                        outputs = await llm_attempt(ctx, plan, node, state, attempt, calls, timeout)
                    else:
                        outputs = await agent_attempt(ctx, node, state)
            except TimeoutError:
                error = NodeError("timeout", f"attempt {attempt} timed out after {timeout:g}s")
            except NodeError as failed_attempt:
                error = failed_attempt
            else:
                duration = (time.perf_counter() - started) * 1000
                completed, outputs = await storable_completion(
                    ctx, node.id, attempt, iteration, outputs, duration
                )
                await ctx.append([*pending, *calls, completed], check_cancel=False)
                return outputs
            duration = (time.perf_counter() - started) * 1000
            failures += 1
            will_retry = error.retryable and failures < policy.attempts
            delay = retry_delay(policy, failures, error.retry_after) if will_retry else None
            info = error_info(error.kind, str(error), node.id)
            failed(span, info.type, info.message)
            span.set_attribute("chiffon.will_retry", will_retry)
            await ctx.append(
                [
                    *pending,
                    *calls,
                    NodeFailed(
                        node_id=node.id,
                        attempt=attempt,
                        iteration=iteration,
                        error=info,
                        will_retry=will_retry,
                        retry_in_ms=None if delay is None else delay * 1000,
                        duration_ms=duration,
                    ),
                ],
                check_cancel=False,
            )
            pending = []
        if not will_retry:
            return plan.after_final_failure(info)
        await ctx.sleep(delay or 0.0)
        attempt += 1
