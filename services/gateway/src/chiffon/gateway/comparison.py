"""Two runs side by side, node by node: outputs, cost and latency. Pure: the router
reads the events and the spend, this module lines them up.

A fork of a run, or the same workflow run twice, is what this is for: which node's
answer changed, and what the change did to the bill and the wait."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chiffon.events import Envelope
from chiffon.gateway.costs import usd
from chiffon.gateway.profiles import RunProfilePublic


@dataclass(frozen=True, slots=True)
class NodeCost:
    """A node's known spend in one run, and its calls without a known price."""

    cost_usd: Decimal = Decimal(0)
    unknown_calls: int = 0


@dataclass(frozen=True, slots=True)
class NodeOutputs:
    outputs: dict[str, Any]
    outputs_ref: str | None  # outputs too large for an event are stored under this name


def node_outputs(events: Iterable[Envelope[Any]]) -> dict[str, NodeOutputs]:
    """Each node's outputs as its last completion recorded them."""
    found: dict[str, NodeOutputs] = {}
    for event in events:
        if event.type == "run.node.completed":
            payload = event.payload
            found[payload.node_id] = NodeOutputs(dict(payload.outputs), payload.outputs_ref)
    return found


class NodeSide(BaseModel):
    """One node in one of the two runs."""

    model_config = ConfigDict(frozen=True)

    status: str
    attempts: int
    wall_ms: float
    model_ms: float
    cost_usd: str
    unknown_calls: int = Field(description="Calls to a model with no known price")
    outputs: dict[str, Any] | None = Field(description="null: the node completed no attempt")
    outputs_ref: str | None


class NodeComparison(BaseModel):
    model_config = ConfigDict(frozen=True)

    node_id: str
    a: NodeSide | None = Field(description="null: the node did not run in run a")
    b: NodeSide | None
    same_outputs: bool
    wall_delta_ms: float | None = Field(description="b less a, when it ran in both")
    cost_delta_usd: str | None = Field(description="b less a, when it ran in both")


class RunSide(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    workflow: str | None
    version: int | None
    status: str
    wall_ms: float
    llm_calls: int
    cost_usd: str
    unknown_calls: int


class ComparisonPublic(BaseModel):
    model_config = ConfigDict(frozen=True)

    a: RunSide
    b: RunSide
    wall_delta_ms: float = Field(description="b less a")
    cost_delta_usd: str = Field(description="b less a")
    same_outputs: bool = Field(description="Every node's outputs are equal in both runs")
    nodes: list[NodeComparison] = Field(description="Run a's nodes in order, then b's others")


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the comparison needs of one run."""

    profile: RunProfilePublic
    outputs: Mapping[str, NodeOutputs]
    costs: Mapping[str, NodeCost]


def _side(facts: RunFacts, node_id: str) -> NodeSide | None:
    node = next((n for n in facts.profile.nodes if n.node_id == node_id), None)
    if node is None:
        return None
    cost = facts.costs.get(node_id, NodeCost())
    done = facts.outputs.get(node_id)
    return NodeSide(
        status=node.status,
        attempts=node.attempts,
        wall_ms=node.wall_ms,
        model_ms=node.model_ms,
        cost_usd=usd(cost.cost_usd),
        unknown_calls=cost.unknown_calls,
        outputs=done.outputs if done else None,
        outputs_ref=done.outputs_ref if done else None,
    )


def _same(a: NodeSide | None, b: NodeSide | None) -> bool:
    if a is None or b is None:
        return False
    # Stored elsewhere (too large for an event): the same object name is the same outputs.
    return (a.outputs, a.outputs_ref) == (b.outputs, b.outputs_ref)


def _run_side(facts: RunFacts) -> RunSide:
    profile = facts.profile
    return RunSide(
        run_id=profile.run_id,
        workflow=profile.workflow,
        version=profile.version,
        status=profile.status,
        wall_ms=profile.wall_ms,
        llm_calls=profile.llm_calls,
        cost_usd=usd(sum((c.cost_usd for c in facts.costs.values()), Decimal(0))),
        unknown_calls=sum(c.unknown_calls for c in facts.costs.values()),
    )


def compare_runs(a: RunFacts, b: RunFacts) -> ComparisonPublic:
    order = [n.node_id for n in a.profile.nodes]
    order += [n.node_id for n in b.profile.nodes if n.node_id not in set(order)]
    nodes = []
    for node_id in order:
        left, right = _side(a, node_id), _side(b, node_id)
        nodes.append(
            NodeComparison(
                node_id=node_id,
                a=left,
                b=right,
                same_outputs=_same(left, right),
                wall_delta_ms=right.wall_ms - left.wall_ms if left and right else None,
                cost_delta_usd=(
                    usd(Decimal(right.cost_usd) - Decimal(left.cost_usd))
                    if left and right
                    else None
                ),
            )
        )
    run_a, run_b = _run_side(a), _run_side(b)
    return ComparisonPublic(
        a=run_a,
        b=run_b,
        wall_delta_ms=run_b.wall_ms - run_a.wall_ms,
        cost_delta_usd=usd(Decimal(run_b.cost_usd) - Decimal(run_a.cost_usd)),
        same_outputs=all(n.same_outputs for n in nodes),
        nodes=nodes,
    )
