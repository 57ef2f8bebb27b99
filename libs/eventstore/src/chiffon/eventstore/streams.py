"""JetStream streams, one per bounded context, and the subject layout.

An event's subject is ``<namespace>.<aggregate>.<aggregate_id>.<event type>``, so
``<namespace>.run.<id>.>`` selects one run's events, which is what the per-aggregate
concurrency check (``Nats-Expected-Last-Subject-Sequence-Subject``) needs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamSpec:
    context: str  # e.g. "RUNS"
    aggregates: tuple[str, ...]  # aggregate names whose events live here


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("RUNS", ("run",)),
    StreamSpec("WORKFLOWS", ("workflow",)),
    StreamSpec("AGENTS", ("agent", "agent_credential")),
    StreamSpec("COSTS", ("cost", "budget")),
    StreamSpec("TRIGGERS", ("trigger", "webhook", "schedule")),
    StreamSpec("KEYS", ("apikey",)),
    StreamSpec("MEMORY", ("memory",)),  # agent memory: one aggregate per namespace
)


class Streams:
    """Stream names and subjects for one namespace."""

    def __init__(self, namespace: str, specs: tuple[StreamSpec, ...] = STREAMS) -> None:
        self.namespace = namespace
        self.specs = specs
        self._by_aggregate = {agg: spec for spec in specs for agg in spec.aggregates}

    def stream_name(self, context: str) -> str:
        return f"{self.namespace.upper()}_{context}"

    def stream_for(self, aggregate: str) -> str:
        try:
            return self.stream_name(self._by_aggregate[aggregate].context)
        except KeyError:
            raise ValueError(f"no stream holds aggregate {aggregate!r}") from None

    def subjects(self, spec: StreamSpec) -> list[str]:
        return [f"{self.namespace}.{agg}.>" for agg in spec.aggregates]

    def subject(self, aggregate: str, aggregate_id: str, event_type: str) -> str:
        return f"{self.namespace}.{aggregate}.{aggregate_id}.{event_type}"

    def aggregate_filter(self, aggregate: str, aggregate_id: str) -> str:
        return f"{self.namespace}.{aggregate}.{aggregate_id}.>"

    def type_filter(self, aggregate: str, event_type: str) -> str:
        return f"{self.namespace}.{aggregate}.*.{event_type}"

    def all_stream_names(self) -> list[str]:
        return [self.stream_name(spec.context) for spec in self.specs]
