"""Spans when nothing records them (no tracer provider): a scope changes nothing a
run can observe, the trace context its events carry included."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from chiffon.core import tracing
from chiffon.core.telemetry import current_traceparent

REQUEST_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's own proxy with no provider behind it, as in a process that exports
    nothing (the global provider of this test process is never set by the unit tests)."""
    monkeypatch.setattr(tracing, "tracer", trace.ProxyTracer("chiffon", None, None, None))
    assert not tracing.tracing_on()


def test_a_scope_without_a_provider_keeps_the_trace_it_runs_in() -> None:
    with tracing.SpanScope("run traced", parent=REQUEST_TRACE):
        outer = current_traceparent()
        with tracing.node_span("draft", "llm", 1, 1) as span:
            assert current_traceparent() == outer
            span.set_attribute("chiffon.outcome", "ok")  # recorded nowhere, no error
            assert not span.is_recording()
        assert current_traceparent() == outer
    assert outer is not None and outer.split("-")[1] == REQUEST_TRACE.split("-")[1]
    assert current_traceparent() is None


def test_an_error_leaves_a_scope_without_a_provider_unchanged() -> None:
    with pytest.raises(ValueError, match="broken"), tracing.node_span("draft", "llm", 1, 1):
        raise ValueError("broken")
    assert current_traceparent() is None


def test_a_tracer_of_its_own_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "tracer", TracerProvider().get_tracer("test"))
    assert tracing.tracing_on()
    with tracing.node_span("draft", "llm", 1, 1) as span:
        assert span.is_recording()
