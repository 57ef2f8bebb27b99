"""A tracer provider that records spans for export at a fraction of the SDK's CPU.

Chiffon opens a span per node attempt and per model call. Recorded by the OpenTelemetry
SDK and exported by its OTLP exporter, a node's two spans cost 0.37 ms of CPU more than
not recording them (bench/tracing.py, load 6), four times the goal of 0.1 ms: the SDK
runs a composed sampler that looks the parent up three times, wraps the attributes in
locked, validating containers, copies every span into a ``ReadableSpan`` when it ends,
and its encoder builds protobuf objects attribute by attribute.

Here a span is a plain object, without the SDK's locks (a span is written by the task
that opened it, and read by the exporter only once ended): its attributes a dict (the
common values, exact ``str``, ``int``, ``float`` and ``bool``, taken as they are;
anything else cleaned by the API's own ``BoundedAttributes``), handed as it is to the
SDK's ``BatchSpanProcessor`` (its queue, thread and ``OTEL_BSP_*`` settings) when it
ends, and encoded by :class:`chiffon.core.otlp.SpanEncoder`. What it records is what the
SDK records (tests/unit/core/test_span_recorder.py compares the two). Sampling is the SDK's default (record unless the
parent was not sampled); the span limits are the SDK's (``OTEL_SPAN_*_COUNT_LIMIT``).
``telemetry.exporting_provider`` falls back to the SDK when ``OTEL_TRACES_SAMPLER`` or
an attribute length limit asks for more than this does.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import Attributes, AttributeValue

log = logging.getLogger(__name__)

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags.SAMPLED
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)  # W3C trace context level 2
_PLAIN = frozenset((str, int, float, bool))


def _linkable(context: SpanContext, attributes: Attributes) -> bool:
    """As the SDK: a link needs a valid span, or something to say about an invalid one."""
    return bool(context and (context.is_valid or attributes or context.trace_state))


class RecordedSpan(trace.Span):
    """A span being recorded, then a finished one for the exporter (the fields
    ``otlp.SpanEncoder`` reads, as the SDK's ``ReadableSpan`` names them)."""

    def __init__(
        self,
        tracer: RecordingTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        links: Sequence[Link],
        start_time: int,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.start_time = start_time
        self.end_time: int | None = None
        self.attributes: dict[str, Any] = {}
        # Bounded as the SDK bounds them: when full, the oldest goes.
        self.events: deque[Event] = deque(maxlen=tracer.provider.max_events)
        self.links: deque[Link] = deque(links, maxlen=tracer.provider.max_links)
        self.status = _UNSET
        self.dropped_attributes = 0
        self.dropped_events = 0
        self.dropped_links = len(links) - len(self.links)

    @property
    def resource(self) -> Resource:
        return self._tracer.provider.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is not None:
            log.warning("Setting attribute on ended span.")
        elif type(value) in _PLAIN and type(key) is str and key:
            self._put(key, value)
        else:
            self._put_cleaned({key: value})

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_time is not None:
            log.warning("Setting attribute on ended span.")
            return
        for key, value in attributes.items():
            if type(value) in _PLAIN and type(key) is str and key:
                self._put(key, value)
            else:
                self._put_cleaned({key: value})

    def _put_cleaned(self, attributes: Mapping[str, Any]) -> None:
        """Anything but a plain value, cleaned by the API's own rules (a sequence
        becomes a tuple; a bad key is dropped and counted)."""
        cleaned = BoundedAttributes(attributes=attributes)
        self.dropped_attributes += len(attributes) - len(cleaned)
        for key, value in cleaned.items():
            self._put(key, value)

    def _put(self, key: str, value: Any) -> None:
        """As the SDK: a key set again moves to the end; when full, the oldest goes."""
        attributes = self.attributes
        attributes.pop(key, None)
        if len(attributes) >= self._tracer.provider.max_attributes:
            self.dropped_attributes += 1
            if not attributes:
                return
            del attributes[next(iter(attributes))]
        attributes[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is not None:
            log.warning("Calling add_event() on an ended span.")
            return
        if len(self.events) == self.events.maxlen:
            self.dropped_events += 1
        limits = self._tracer.provider.limits
        kept = BoundedAttributes(limits.max_event_attributes, attributes, immutable=True)
        self.events.append(Event(name, kept, timestamp if timestamp is not None else time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self.end_time is not None or not _linkable(context, attributes):
            return
        if len(self.links) == self.links.maxlen:
            self.dropped_links += 1
        self.links.append(self._tracer.provider.link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        # As the SDK: OK is final, UNSET changes nothing.
        if self.status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
            return
        self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, AttributeValue] = {
            "exception.type": qualname if module in (None, "builtins") else f"{module}.{qualname}",
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            log.warning("Calling end() on an ended span.")
            return
        self.end_time = end_time if end_time is not None else time_ns()
        self._tracer.provider.processor.on_end(self)  # type: ignore[arg-type]


class RecordingTracer(trace.Tracer):
    def __init__(self, provider: RecordingTracerProvider, scope: InstrumentationScope) -> None:
        self.provider = provider
        self.scope = scope
        self._ids = provider.ids

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        assert parent is not None
        if parent.is_valid:
            if not parent.trace_flags.sampled:  # the caller chose not to record this trace
                return NonRecordingSpan(
                    SpanContext(
                        parent.trace_id,
                        self._ids.generate_span_id(),
                        is_remote=False,
                        trace_flags=TraceFlags(parent.trace_flags & _RANDOM),
                        trace_state=parent.trace_state,
                    )
                )
            trace_id, state = parent.trace_id, parent.trace_state
            flags = _SAMPLED | (parent.trace_flags & _RANDOM)
        else:
            parent, state = None, None
            trace_id = self._ids.generate_trace_id()
            flags = self.provider.root_flags
        span = RecordedSpan(
            self,
            name,
            SpanContext(
                trace_id,
                self._ids.generate_span_id(),
                is_remote=False,
                trace_flags=TraceFlags(flags),
                trace_state=state,
            ),
            parent,
            kind,
            [
                self.provider.link(link.context, link.attributes)
                for link in links or ()
                if _linkable(link.context, link.attributes)
            ],
            start_time if start_time is not None else time_ns(),
        )
        if attributes:
            span.set_attributes(attributes)
        return span

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's decorator is private
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class RecordingTracerProvider(trace.TracerProvider):
    """Tracers whose spans end in ``processor`` (a ``BatchSpanProcessor``), flushed and
    shut down when the process exits, as the SDK's provider does."""

    def __init__(
        self, resource: Resource, processor: SpanProcessor, ids: IdGenerator | None = None
    ) -> None:
        self.resource = resource
        self.processor = processor
        self.limits = limits = SpanLimits()  # OTEL_SPAN_*_COUNT_LIMIT, or 128 each
        self.max_attributes = limits.max_span_attributes or sys.maxsize
        self.max_events = limits.max_events
        self.max_links = limits.max_links
        self.ids = ids or RandomIdGenerator()
        random = getattr(self.ids, "is_trace_id_random", lambda: False)()
        self.root_flags = TraceFlags(_SAMPLED | (_RANDOM if random else 0))
        self._tracers: dict[tuple[str, str | None, str | None], RecordingTracer] = {}
        self._lock = threading.Lock()
        self._shut = False
        atexit.register(self.shutdown)

    def link(self, context: SpanContext, attributes: Attributes) -> Link:
        bounded = BoundedAttributes(self.limits.max_link_attributes, attributes, immutable=True)
        return Link(context, bounded)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        key = (instrumenting_module_name, instrumenting_library_version, schema_url)
        with self._lock:
            tracer = self._tracers.get(key)
            if tracer is None:
                scope = InstrumentationScope(
                    instrumenting_module_name,
                    instrumenting_library_version,
                    schema_url,
                    attributes,
                )
                tracer = self._tracers[key] = RecordingTracer(self, scope)
            return tracer

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        self.processor.shutdown()
