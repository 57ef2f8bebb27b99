"""The spans of a run's trace: one way to open them, and the names of their attributes.

A run is one trace: the gateway's request, the command, the run on each replica that
executes it, every node attempt, every model call and every agent task (into the
agent's own span). The trace travels as a W3C traceparent on commands, on event
envelopes and in gRPC metadata (``telemetry.current_traceparent``).

Spans are opened with ``SpanScope`` rather than ``start_as_current_span``: a plain
class costs less than the generator-based context manager the API offers, and a node
opens one or two spans on every attempt (see bench/tracing.py for what they cost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

tracer = trace.get_tracer("chiffon")
_propagator = TraceContextTextMapPropagator()

# GenAI semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/).
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ERROR_TYPE = "error.type"
# Chiffon's own: the semantic conventions name no cost attribute.
COST_USD = "chiffon.cost_usd"
RUN_ID = "chiffon.run_id"


_UNCHANGED: Span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
"""A ``SpanScope``'s span when no tracer provider is set: the scope leaves the context as
it is (``__enter__`` gives the current span)."""


def tracing_on() -> bool:
    """Whether Chiffon's spans go anywhere: ``tracer`` is a tracer of its own (a test's),
    or the API's proxy and a provider is set that is not the no-op one."""
    if not isinstance(tracer, trace.ProxyTracer):
        return not isinstance(tracer, trace.NoOpTracer)
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


class SpanScope:
    """``with SpanScope(name, ...) as span:`` a span, current for the block's duration.

    An exception leaving the block marks the span as failed with its type, unless it
    is a cancellation (a run is handed over or suspended that way) or one of
    ``signals``, the exceptions that stop work on purpose (a pause, a cancel): those
    are recorded as ``chiffon.stopped_by``."""

    __slots__ = ("_signals", "_token", "span")

    def __init__(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttributeValue] | None = None,
        parent: str | None = None,
        links: Sequence[Link] = (),
        signals: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._signals = signals
        self._token: object = None
        if parent is None and not tracing_on():
            # No tracer provider: the API's no-op span would carry the current span's
            # context, which is current already; nothing to start, attach or end
            # (3-5 us per scope, and a replay opens one or two per node).
            self.span: Span = _UNCHANGED
            return
        context = context_of(parent) if parent else None
        self.span = tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, links=links
        )

    def __enter__(self) -> Span:
        if self.span is _UNCHANGED:
            return trace.get_current_span()
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.span is _UNCHANGED:
            return
        if error is not None:
            if isinstance(error, self._signals):
                self.span.set_attribute("chiffon.stopped_by", type(error).__name__)
            elif not isinstance(error, (asyncio.CancelledError, GeneratorExit)):
                failed(self.span, type(error).__name__, str(error))
        otel_context.detach(self._token)  # type: ignore[arg-type]
        self.span.end()


def node_span(
    node_id: str,
    node_type: str,
    attempt: int,
    iteration: int,
    signals: tuple[type[BaseException], ...] = (),
) -> SpanScope:
    """The span of one attempt of one node (its run's id is on the run's span: every
    attribute costs on every node, in the SDK and again in the exporter's encoding)."""
    return SpanScope(
        f"node {node_id}",
        attributes={
            "chiffon.node_type": node_type,
            "chiffon.attempt": attempt,
            "chiffon.iteration": iteration,
        },
        signals=signals,
    )


def failed(span: Span, error_type: str, message: str = "") -> None:
    """Mark ``span`` as failed, ``error_type`` naming the failure."""
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, message[:500] or error_type))


def context_of(traceparent: str) -> Any:
    """The OpenTelemetry context whose parent is ``traceparent`` (empty when malformed)."""
    return _propagator.extract({"traceparent": traceparent})


def span_context_of(traceparent: str | None) -> SpanContext | None:
    """The span a traceparent names, or None (absent or malformed)."""
    if not traceparent:
        return None
    context = trace.get_current_span(context_of(traceparent)).get_span_context()
    return context if context.is_valid else None


def links_to(*traceparents: str | None) -> list[Link]:
    """Links to the spans named by these traceparents (the malformed ones left out)."""
    found = (span_context_of(t) for t in traceparents)
    return [Link(c) for c in found if c is not None]


def same_trace(first: str | None, second: str | None) -> bool:
    a, b = span_context_of(first), span_context_of(second)
    return a is not None and b is not None and a.trace_id == b.trace_id


def gen_ai_system(model: str) -> str:
    """The provider a LiteLLM-style model string names (``openai/gpt-4o`` -> ``openai``)."""
    provider, slash, _ = model.partition("/")
    return provider if slash else "openai"
