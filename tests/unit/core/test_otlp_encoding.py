"""Chiffon's one-pass OTLP encoding writes the very message the SDK's encoder builds:
both are decoded and compared, for spans that use every part of the format (links,
events, statuses, remote parents, trace state, every attribute type, hostile strings,
dropped attributes, several resources and scopes in one batch); and its exporter
delivers a batch to a real OTLP/HTTP receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from chiffon.core.otlp import OtlpSpanExporter, SpanEncoder
from tests.integration.tracing.receiver import Receiver

HOSTILE = "naïve ☃ \x00 '; DROP TABLE spans; -- \U0001f600 " + "x" * 300
REMOTE = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "v1"), ("other", "x=y")]),
)


def provider(
    resource: Resource, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    made = TracerProvider(resource=resource, span_limits=limits)
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made, exporter


@pytest.fixture
def spans() -> Iterator[list[ReadableSpan]]:
    """Finished spans of two providers (two resources), three scopes."""
    first, first_spans = provider(
        Resource.create({"service.name": "chiffon-executor", "service.instance.id": "e-1"}),
        SpanLimits(max_span_attributes=4, max_events=1, max_links=1),
    )
    second, second_spans = provider(Resource({"service.name": HOSTILE}, "https://schema/1"))
    chiffon = first.get_tracer("chiffon")
    scoped = first.get_tracer("other", "1.2.3", "https://schema/2", {"scope.attr": 7})
    with chiffon.start_as_current_span("run traced", attributes={"chiffon.run_id": "r-1"}):
        with chiffon.start_as_current_span(
            "node draft",
            attributes={
                "chiffon.node_type": "llm",
                "chiffon.attempt": 1,
                "chiffon.iteration": 1,
            },
        ) as node:
            node.set_attribute("chiffon.will_retry", False)
            node.set_attribute("dropped.by.limit", "yes")  # over max_span_attributes
            node.set_status(Status(StatusCode.ERROR, HOSTILE))
            with chiffon.start_as_current_span("chat chiffon/echo", kind=SpanKind.CLIENT) as call:
                call.set_attributes(
                    {
                        "gen_ai.usage.input_tokens": 12,
                        "negative": -(2**63),
                        "big": 2**63 - 1,
                        "cost": 0.000125,
                    }
                )
        chiffon.start_span(
            "attributes", attributes={"zero": -0.0, "empty": "", "true": True, "inf": float("inf")}
        ).end()
        chiffon.start_span(
            "arrays",
            attributes={
                "reasons": ("stop", HOSTILE),
                "ints": (1, -2, 3),
                "floats": (0.5, -1.0),
                "bools": (True, False),
                "none": (),
            },
        ).end()
        ok = scoped.start_span("ok", kind=SpanKind.SERVER)
        ok.set_status(Status(StatusCode.OK))
        ok.add_event("first", {"n": 1, "s": HOSTILE}, timestamp=1_700_000_000_000_000_000)
        ok.add_event("dropped over max_events")
        ok.end()
    linked = chiffon.start_span(
        "resumed",
        context=set_span_in_context(NonRecordingSpan(REMOTE)),
        kind=SpanKind.CONSUMER,
        links=[Link(REMOTE, {"why": "approval"}), Link(REMOTE)],  # one over max_links
    )
    linked.end()
    producer = second.get_tracer("chiffon").start_span("p", kind=SpanKind.PRODUCER)
    producer.end()
    finished = [*first_spans.get_finished_spans(), *second_spans.get_finished_spans()]
    # Interleaved resources: each is still one ResourceSpans, as the SDK groups them.
    finished.insert(2, finished.pop())
    yield finished
    first.shutdown()
    second.shutdown()


def test_a_batch_decodes_to_the_message_the_sdk_encoder_builds(spans: list[ReadableSpan]) -> None:
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))
    assert ours == encode_spans(spans)
    assert len(ours.resource_spans) == 2
    assert sum(len(s.spans) for r in ours.resource_spans for s in r.scope_spans) == len(spans)


def test_memoized_attributes_and_headers_encode_later_batches_the_same(
    spans: list[ReadableSpan],
) -> None:
    encoder = SpanEncoder()
    first = encoder.encode(spans)
    assert encoder.encode(spans) == first
    for one in spans:  # a batch of one span each, after the memo is warm
        assert ExportTraceServiceRequest.FromString(encoder.encode([one])) == encode_spans([one])
    assert encoder.encode([]) == b""


def test_the_exporter_delivers_a_batch_to_an_otlp_http_receiver(
    spans: list[ReadableSpan],
) -> None:
    with Receiver().serving() as receiver:
        exporter = OtlpSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        try:
            assert exporter.export(spans).name == "SUCCESS"
        finally:
            exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped
        received = receiver.received()
    assert receiver.requests == 1
    assert sorted((s.name, s.span_id) for s in received) == sorted(
        (s.name, f"{s.context.span_id:016x}") for s in spans
    )
    node = next(s for s in received if s.name == "node draft")
    assert node.attributes["chiffon.attempt"] == 1  # chiffon.node_type: over the limit
    assert node.status_code == StatusCode.ERROR.value
    resumed = next(s for s in received if s.name == "resumed")
    assert resumed.parent_span_id == f"{REMOTE.span_id:016x}"
    assert resumed.links == ((f"{REMOTE.trace_id:032x}", f"{REMOTE.span_id:016x}"),)
