"""Chiffon's span recorder records what the OpenTelemetry SDK records: the same calls
through both, with the same ids, give the same OTLP message (times aside), including
the SDK's rules at the edges (attribute cleaning, count limits dropping the oldest,
a final OK status, an unsampled parent, exceptions); and Chiffon's exporting set-up
uses it unless a variable asks for what only the SDK does."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from chiffon.core import telemetry
from chiffon.core.otlp import SpanEncoder
from chiffon.core.span_recorder import RecordingTracerProvider

RESOURCE = Resource.create({"service.name": "chiffon-test"})


class Counting(IdGenerator):
    """Ids 1, 2, 3...: both providers give the same calls the same ids."""

    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last

    def generate_trace_id(self) -> int:
        self.last += 1
        return self.last << 64


def remote(sampled: bool) -> SpanContext:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(
        0xABC << 64, 0xDEF, is_remote=True, trace_flags=flags, trace_state=TraceState([("v", "1")])
    )


def scenario(tracer: trace.Tracer) -> None:
    """A run's spans, and every edge of the API the SDK has a rule for."""
    with tracer.start_as_current_span(
        "run traced",
        attributes={
            "chiffon.run_id": "r-1",
            "list": ["a", "b"],  # kept as a tuple
            "mixed": [1, "x"],  # dropped: not homogeneous
            "nested": {"x": 1},  # dropped: not an attribute value
            "none": None,  # dropped
            "": "empty key",  # dropped
        },
    ):
        with tracer.start_as_current_span("node draft") as node:
            node.set_attributes({"chiffon.node_type": "llm", "chiffon.attempt": 1})
            node.set_attribute("chiffon.iteration", 2)
            node.set_attribute("over.the.limit", True)  # the oldest attribute goes
            node.set_status(Status(StatusCode.ERROR, "first"))
            node.set_status(StatusCode.OK)
            node.set_status(Status(StatusCode.ERROR, "after OK: ignored"))
            node.update_name("node draft, renamed")
            call = tracer.start_span(
                "chat chiffon/echo",
                kind=SpanKind.CLIENT,
                links=[Link(remote(True), {"why": "first"}), Link(remote(False))],
            )
            for n in range(3):  # one over the limit: the oldest goes
                call.add_event(f"chunk {n}", {"n": n, "floats": (0.5, 1.5)}, timestamp=n)
            call.add_link(remote(True), {"why": "later"})  # over the limit: the oldest goes
            call.add_link(SpanContext(0, 0, False))  # nothing to link to
            call.set_attribute("gen_ai.usage.input_tokens", 12)
            call.end()
            call.set_attribute("after.end", "ignored")
            call.end()  # a second end changes nothing
        with pytest.raises(ValueError), tracer.start_as_current_span("fails", kind=SpanKind.SERVER):
            raise ValueError("boom")
    resumed = trace.set_span_in_context(NonRecordingSpan(remote(True)))
    tracer.start_span("resumed", context=resumed, kind=SpanKind.CONSUMER).end()
    unsampled = trace.set_span_in_context(NonRecordingSpan(remote(False)))
    not_recorded = tracer.start_span("unsampled", context=unsampled)
    assert not not_recorded.is_recording()
    not_recorded.end()


def recorded_by(provider: TracerProvider | RecordingTracerProvider) -> ExportTraceServiceRequest:
    exporter = InMemorySpanExporter()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.processor = SimpleSpanProcessor(exporter)
    scenario(provider.get_tracer("chiffon", "1.0"))
    message = encode_spans(exporter.get_finished_spans())
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.start_time_unix_nano = span.end_time_unix_nano = 0
                for event in span.events:
                    if event.name == "exception":  # when and where it was raised from
                        event.time_unix_nano = 0
                        for attribute in event.attributes:
                            if attribute.key == "exception.stacktrace":
                                attribute.value.string_value = ""
    provider.shutdown()
    return message


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "2")


@pytest.mark.usefixtures("limits")
def test_the_recorder_records_what_the_sdk_records() -> None:
    sdk = recorded_by(TracerProvider(resource=RESOURCE, id_generator=Counting()))
    ours = recorded_by(
        RecordingTracerProvider(RESOURCE, SimpleSpanProcessor(InMemorySpanExporter()), Counting())
    )
    assert ours == sdk
    spans = {s.name: s for s in ours.resource_spans[0].scope_spans[0].spans}
    assert sorted(spans) == [
        "chat chiffon/echo",
        "fails",
        "node draft, renamed",
        "resumed",
        "run traced",
    ]
    assert [e.name for e in spans["fails"].events] == ["exception"]
    assert spans["node draft, renamed"].dropped_attributes_count == 1


@pytest.mark.usefixtures("limits")
def test_chiffons_encoder_writes_the_recorders_spans_as_the_sdk_encoder_does() -> None:
    exporter = InMemorySpanExporter()
    provider = RecordingTracerProvider(RESOURCE, SimpleSpanProcessor(exporter))
    scenario(provider.get_tracer("chiffon"))
    spans = exporter.get_finished_spans()
    assert ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans)) == encode_spans(spans)


def test_exporting_uses_the_recorder_unless_a_variable_asks_for_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    chosen = telemetry.exporting_provider(RESOURCE, exporter)
    assert isinstance(chosen, RecordingTracerProvider)
    chosen.shutdown()
    for variable, value in (
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "64"),
    ):
        with monkeypatch.context() as patched:
            patched.setenv(variable, value)
            chosen = telemetry.exporting_provider(RESOURCE, exporter)
            assert isinstance(chosen, TracerProvider), variable
            chosen.shutdown()


def test_an_endpoint_exports_unless_the_sdk_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    exporting = telemetry.provider_for(RESOURCE)
    assert isinstance(exporting, RecordingTracerProvider)
    exporting.shutdown()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "True")
    disabled = telemetry.provider_for(RESOURCE)
    with disabled.get_tracer("test").start_as_current_span("nothing") as span:
        assert not span.is_recording()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    idle = telemetry.provider_for(RESOURCE)
    with idle.get_tracer("test").start_as_current_span("ids only") as span:
        assert not span.is_recording() and span.get_span_context().is_valid
