"""Structured logs: JSON lines that carry the trace id of the current span."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from chiffon.core.logging import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # configure_logging is process-wide; leave no logger bound to the captured stderr.
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


def test_a_log_line_is_json_with_service_and_trace_ids(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(service="registry", level="info", fmt="json")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        get_logger("test").info("agent.registered", agent_id="a1")
        trace_id = format(span.get_span_context().trace_id, "032x")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["event"] == "agent.registered"
    assert record["agent_id"] == "a1"
    assert record["service"] == "registry"
    assert record["trace_id"] == trace_id
    assert record["level"] == "info"
