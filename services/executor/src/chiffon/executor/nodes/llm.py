"""The ``llm`` node: one attempt, the node's model then each fallback until one answers."""

from __future__ import annotations

import time
from typing import Any

from chiffon.events.runs import LlmCalled
from chiffon.executor.models import ModelRequest, ProviderError
from chiffon.executor.nodes.context import MAX_ERROR, Execution, NodeError, storable_text
from chiffon.executor.nodes.output_schema import parse_output
from chiffon.executor.nodes.plan import NodePlan
from chiffon.workflow import LlmNode, TemplateError


async def llm_attempt(
    ctx: Execution,
    plan: NodePlan,
    node: LlmNode,
    state: dict[str, Any],
    attempt: int,
    calls: list[LlmCalled],
    timeout: float | None,
) -> dict[str, Any]:
    """The node's outputs, each call recorded in ``calls``; ``NodeError`` when no model
    answered (see ``no_model_answered``) or the answer does not fit the output."""
    templates = plan.templates
    try:
        prompt = templates["prompt"].render(state)
        system = templates["system"].render(state) if "system" in templates else None
    except TemplateError as error:
        raise NodeError("template_error", f"{node.id}: {error}", retryable=False) from None
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    models = plan.models
    deadline = None if timeout is None else time.monotonic() + timeout
    failures: list[ProviderError] = []
    for index, model in enumerate(models):
        remaining = None if deadline is None else max(0.05, deadline - time.monotonic())
        started = time.perf_counter()
        call = ctx.llm.complete(
            ModelRequest(
                model=model,
                messages=messages,
                response_format=plan.response_format,
                temperature=plan.temperature,
                max_tokens=plan.max_tokens,
                timeout=remaining,
            )
        )
        try:
            # An in-process answer is not worth the tasks that let a cancel interrupt it.
            reply = await (call if ctx.llm.in_process(model) else ctx.interruptible(call))
        except ProviderError as error:
            failures.append(error)
            calls.append(
                LlmCalled(
                    node_id=node.id,
                    attempt=attempt,
                    provider=error.provider,
                    model=error.model,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    ok=False,
                    error=storable_text(str(error)[:MAX_ERROR]),
                    fallback_index=index,
                )
            )
            continue
        calls.append(
            LlmCalled(
                node_id=node.id,
                attempt=attempt,
                provider=reply.provider,
                model=reply.model,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                cached_read_tokens=reply.cached_read_tokens,
                cache_write_tokens=reply.cache_write_tokens,
                reasoning_tokens=reply.reasoning_tokens,
                latency_ms=reply.latency_ms,
                finish_reason=None
                if reply.finish_reason is None
                else storable_text(reply.finish_reason),
                fallback_index=index,
            )
        )
        return parse_output(node, reply.text, plan.output_model)
    raise no_model_answered(models, failures)


def no_model_answered(models: list[str], failures: list[ProviderError]) -> NodeError:
    """The attempt's failure when every model failed. Another attempt is worth it only if
    some model failed in a way a retry can cure (then the last such failure names it),
    and not before the longest wait one of those providers asked for."""
    retryable = [f for f in failures if f.retryable]
    named = retryable[-1] if retryable else failures[-1]
    waits = [f.retry_after for f in retryable if f.retry_after is not None]
    return NodeError(
        named.kind,
        f"no model answered (tried {', '.join(models)}): {named}",
        retryable=bool(retryable),
        retry_after=max(waits) if waits else None,
    )
