"""The ``llm`` node: one attempt, the node's model then each fallback until one answers.

Under a hard budget (issue 18) each call is first reserved at its worst case against
every budget that applies (``budgets.gate``); a call the budget refuses does not go out.
The node then takes the first fallback that is zero-cost, or cheaper at worst and fits,
and records why on its ``run.llm.called`` (``budget_note``). When none fits, the run
pauses (``BudgetPause``) until the budget is raised or its period rolls over. With
``prefer_local_below``, a budget whose remaining share is below it sends the node to its
first zero-cost fallback first.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from chiffon.core.tracing import (
    COST_USD,
    GEN_AI_INPUT_TOKENS,
    GEN_AI_OPERATION,
    GEN_AI_OUTPUT_TOKENS,
    GEN_AI_REQUEST_MAX_TOKENS,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_REQUEST_TEMPERATURE,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_SYSTEM,
    SpanScope,
    failed,
    gen_ai_system,
)
from chiffon.events.limits import REASON_MAX_CHARS
from chiffon.events.runs import LlmCalled, RunPaused
from chiffon.executor.budgets.gate import Hold, Refusal
from chiffon.executor.models import ModelReply, ModelRequest, ProviderError
from chiffon.executor.nodes.context import (
    MAX_ERROR,
    BudgetPause,
    Execution,
    NodeError,
    RunCancelledSignal,
    storable_text,
)
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
    answered (see ``no_model_answered``) or the answer does not fit the output;
    ``BudgetPause`` when a budget refused every model that could answer."""
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
    gate = ctx.budget
    budgets = gate.budgets_for(ctx.run) if gate is not None else []
    order = list(enumerate(models))
    preferred: tuple[int, str] | None = None  # (index, why) of a local model tried first
    if gate is not None and budgets:
        share = ctx.prefer_local_below(node.id)
        short = gate.short_budget(budgets, share) if share is not None else None
        local = next((i for i, m in order[1:] if gate.is_zero_cost(m)), None)
        if short is not None and local is not None:
            order = [order[local], *(o for o in order if o[0] != local)]
            why = f"{short} (prefer_local_below {share:g}%): {models[local]} tried first"
            preferred = (local, why)
    deadline = None if timeout is None else time.monotonic() + timeout
    failures: list[ProviderError] = []
    refusal = None
    for index, model in order:
        remaining = None if deadline is None else max(0.05, deadline - time.monotonic())
        held: Hold | None = None  # the call's reservation
        if gate is not None and budgets and not gate.is_zero_cost(model):
            worst = gate.worst_case(model, messages, plan.max_tokens)
            if refusal is not None and (
                worst is None or refusal.needed_usd is None or worst >= refusal.needed_usd
            ):
                continue  # after a refusal, only a cheaper model is worth asking for
            hold = await gate.hold(
                budgets,
                reservation_id=_reservation(ctx, node, attempt, index),
                run_id=ctx.run.run_id,
                node_id=node.id,
                model=model,
                amount=worst,
                timeout=remaining,
            )
            if isinstance(hold, Refusal):
                refusal = refusal or hold
                continue
            held = hold
        elif refusal is not None and gate is not None and not gate.is_zero_cost(model):
            continue
        note = preferred[1] if preferred is not None and preferred[0] == index else None
        if refusal is not None:
            note = f"budget refused {refusal.describe()}: took fallback {model}"
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
        with model_call_span(model, plan.max_tokens, plan.temperature) as span:
            try:
                # An in-process answer is not worth the tasks that let a cancel interrupt it.
                reply = await (call if ctx.llm.in_process(model) else ctx.interruptible(call))
            except BaseException as error:
                if held is not None and gate is not None:
                    # Whether it went out or not, its cost is unknown: nothing is counted.
                    gate.release(held, Decimal(0))
                if not isinstance(error, ProviderError):
                    raise
                span.set_attribute(GEN_AI_SYSTEM, error.provider)
                failed(span, error.kind, str(error))
                failure: ProviderError | None = error
            else:
                failure = None
                cost: Decimal | None = None
                if held is not None and gate is not None:
                    cost = gate.cost_of(model, reply)
                    gate.release(held, cost)
                answered(span, reply, model, cost)
        if failure is not None:
            failures.append(failure)
            calls.append(
                LlmCalled(
                    node_id=node.id,
                    attempt=attempt,
                    provider=failure.provider,
                    model=failure.model,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    ok=False,
                    error=storable_text(str(failure)[:MAX_ERROR]),
                    fallback_index=index,
                    budget_note=_note(note),
                    budget_holds=() if held is None else held.ids,
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
                budget_note=_note(note),
                budget_holds=() if held is None else held.ids,
            )
        )
        return parse_output(node, reply.text, plan.output_model)
    if refusal is not None and not failures:
        if refusal.reason == "price_unknown":
            raise NodeError("price_unknown", refusal.describe(), retryable=False)
        raise BudgetPause(
            RunPaused(
                reason="budget",
                node_id=node.id,
                budget=refusal.budget,
                needed_usd=refusal.needed_usd,
            ),
            calls,
        )
    raise no_model_answered(models, failures)


def model_call_span(model: str, max_tokens: int | None, temperature: float | None) -> SpanScope:
    """The span of one model call (GenAI semantic conventions)."""
    attributes: dict[str, AttributeValue] = {
        GEN_AI_OPERATION: "chat",
        GEN_AI_SYSTEM: gen_ai_system(model),
        GEN_AI_REQUEST_MODEL: model,
    }
    if max_tokens is not None:
        attributes[GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    if temperature is not None:
        attributes[GEN_AI_REQUEST_TEMPERATURE] = temperature
    return SpanScope(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        signals=(RunCancelledSignal,),
    )


def answered(span: Span, reply: ModelReply, model: str, cost: Decimal | None) -> None:
    """What the model answered, on its call's span: the tokens, and the cost when a
    budget priced the call. The system and the model only when they are not the ones
    the span started with (each attribute costs on every call: bench/tracing.py)."""
    span.set_attribute(GEN_AI_INPUT_TOKENS, reply.prompt_tokens)
    span.set_attribute(GEN_AI_OUTPUT_TOKENS, reply.completion_tokens)
    if reply.model != model:
        span.set_attribute(GEN_AI_RESPONSE_MODEL, reply.model)
    if reply.provider != gen_ai_system(model):
        span.set_attribute(GEN_AI_SYSTEM, reply.provider)
    if reply.finish_reason not in (None, "stop"):
        span.set_attribute(GEN_AI_RESPONSE_FINISH_REASONS, (str(reply.finish_reason),))
    if cost is not None:
        span.set_attribute(COST_USD, float(cost))


def _reservation(ctx: Execution, node: LlmNode, attempt: int, index: int) -> str:
    """A call's reservation id: the same for the same call however often it is asked."""
    return f"{ctx.run.run_id}:{node.id}:{attempt}:{index}"


def _note(note: str | None) -> str | None:
    return None if note is None else storable_text(note[:REASON_MAX_CHARS])


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
