"""The run page's waterfall: one bar per node attempt, drawn server-side as SVG (as the
spend chart is), placed by when it started and sized by how long it took, from the
run's profile. Inside a bar, the share of it spent waiting for the model, an agent or a
person, or paused, is shaded from the left; what is left is Chiffon's own time."""

from __future__ import annotations

from dataclasses import dataclass

from chiffon.gateway.profiles import RunProfilePublic, SpanProfile

LABEL_WIDTH = 170
TRACK_WIDTH = 480
TIME_WIDTH = 70
WIDTH = LABEL_WIDTH + TRACK_WIDTH + TIME_WIDTH
ROW_HEIGHT = 22
BAR_HEIGHT = 14
MIN_BAR = 1.5  # an attempt of a millisecond still shows
ROWS_MAX = 200
"""Attempts drawn; a loop of thousands of iterations would make a page no one reads
(the profile API and ``chiffon profile --attempts`` list them all)."""


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str  # model, agent, human or paused
    x: float
    width: float


@dataclass(frozen=True, slots=True)
class Row:
    span: SpanProfile
    y: float
    x: float
    width: float
    segments: tuple[Segment, ...]
    bottleneck: bool

    @property
    def label(self) -> str:
        suffix = f" #{self.span.attempt}" if self.span.attempt > 1 else ""
        loop = f" ×{self.span.iteration}" if self.span.iteration > 1 else ""
        return f"{self.span.node_id}{loop}{suffix}"


@dataclass(frozen=True, slots=True)
class Waterfall:
    rows: tuple[Row, ...]
    height: float
    hidden: int  # attempts beyond ROWS_MAX, not drawn


def _row(span: SpanProfile, index: int, run_wall: float, bottleneck: str | None) -> Row:
    scale = TRACK_WIDTH / run_wall if run_wall > 0 else 0.0
    x = LABEL_WIDTH + min(span.start_ms * scale, TRACK_WIDTH - MIN_BAR)
    width = min(max(span.wall_ms * scale, MIN_BAR), LABEL_WIDTH + TRACK_WIDTH - x)
    segments = []
    offset = x
    for kind, waited in (
        ("model", span.model_ms),
        ("agent", span.agent_ms),
        ("human", span.human_ms),
        ("paused", span.paused_ms),
    ):
        part = width * waited / span.wall_ms if span.wall_ms > 0 else 0.0
        if part > 0:
            segments.append(Segment(kind, round(offset, 2), round(part, 2)))
            offset += part
    return Row(
        span=span,
        y=index * ROW_HEIGHT,
        x=round(x, 2),
        width=round(width, 2),
        segments=tuple(segments),
        bottleneck=span.node_id == bottleneck,
    )


def waterfall(profile: RunProfilePublic) -> Waterfall:
    shown = profile.spans[:ROWS_MAX]
    rows = tuple(
        _row(span, index, profile.wall_ms, profile.bottleneck) for index, span in enumerate(shown)
    )
    return Waterfall(rows, len(rows) * ROW_HEIGHT, len(profile.spans) - len(shown))
