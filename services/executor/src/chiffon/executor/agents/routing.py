"""Which agent takes a task: pure functions over the directory's view of the agents.

First the hard filters, each with the reason an agent was passed over: the agent is
online (not offline, deregistered, or unreachable from this replica), holds every
required capability, carries every required label, has the resources asked for (a GPU
with at least ``gpu_vram_gb`` GiB of VRAM, at least ``cpu_cores`` cores), and is not full
(the tasks this replica runs on it reach its ``max_concurrency``). Then a score, higher
is better, from the weights in the settings:

- free capacity: ``1 - running / max_concurrency``;
- recent success rate: ``(ok + 1) / (tasks + 2)`` over the last tasks here (an agent
  without history starts at one half, neither trusted nor shunned);
- latency: ``scale / (scale + mean recent dispatch latency)`` (1 without history).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

GIB = float(1 << 30)

AgentStatus = Literal["online", "offline", "deregistered"]


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as the AGENTS stream describes it (see ``directory.evolve_agent``)."""

    agent_id: str
    name: str
    address: str
    capabilities: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu_cores: float | None = None
    gpu_vram_bytes: tuple[float, ...] = ()  # one entry per GPU
    max_concurrency: int = 1
    status: AgentStatus = "online"
    version: int = 0  # stream sequence of its last event


@dataclass(frozen=True, slots=True)
class LocalView:
    """What this replica knows of an agent beyond the stream: its tasks running here,
    whether it could not be reached, and how its recent tasks went."""

    running: int = 0
    unreachable: bool = False
    recent_ok: int = 0
    recent_total: int = 0
    mean_latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Requirement:
    """What an agent node asks of the agent that runs it."""

    capabilities: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu_vram_gb: float | None = None
    cpu_cores: float | None = None

    def describe(self) -> str:
        parts = [f"capabilities [{', '.join(self.capabilities)}]"]
        if self.labels:
            parts.append("labels " + ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())))
        if self.gpu_vram_gb is not None:
            parts.append(f"a GPU with {self.gpu_vram_gb:g} GiB VRAM")
        if self.cpu_cores is not None:
            parts.append(f"{self.cpu_cores:g} CPU cores")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Weights:
    capacity: float = 1.0
    success: float = 1.0
    latency: float = 0.5
    latency_scale_ms: float = 50.0


@dataclass(frozen=True, slots=True)
class Candidate:
    agent: AgentView
    score: float
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Routing:
    """The capable agents, best first, and why each other agent was passed over."""

    candidates: tuple[Candidate, ...]
    passed_over: Mapping[str, str]

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def explain(self) -> str:
        """Why no agent could take the task (for the node's error), in a few words."""
        if not self.passed_over:
            return "no agent is registered"
        shown = sorted(self.passed_over.items())[:5]
        more = len(self.passed_over) - len(shown)
        text = "; ".join(f"{agent}: {reason}" for agent, reason in shown)
        return text + (f"; and {more} more" if more > 0 else "")


def refusal(agent: AgentView, local: LocalView, need: Requirement) -> str | None:
    """Why ``agent`` cannot take a task needing ``need`` now, or None if it can."""
    if agent.status != "online":
        return agent.status
    if local.unreachable:
        return "unreachable from this executor"
    missing = [c for c in need.capabilities if c not in agent.capabilities]
    if missing:
        return f"lacks capabilities [{', '.join(missing)}]"
    for key, value in sorted(need.labels.items()):
        have = agent.labels.get(key)
        if have != value:
            return f"label {key}={value} not matched" + ("" if have is None else f" ({have})")
    if need.gpu_vram_gb is not None:
        wanted = need.gpu_vram_gb * GIB
        if not any(vram >= wanted for vram in agent.gpu_vram_bytes):
            best = max(agent.gpu_vram_bytes, default=0.0) / GIB
            return f"no GPU with {need.gpu_vram_gb:g} GiB VRAM (largest {best:.1f} GiB)"
    if need.cpu_cores is not None and (agent.cpu_cores or 0.0) < need.cpu_cores:
        return f"{agent.cpu_cores or 0:g} CPU cores, {need.cpu_cores:g} needed"
    if local.running >= agent.max_concurrency:
        return f"full ({local.running}/{agent.max_concurrency} tasks)"
    return None


def score(agent: AgentView, local: LocalView, weights: Weights) -> tuple[float, tuple[str, ...]]:
    """The agent's score (higher is better) and its parts, as reasons to record."""
    free = 1.0 - local.running / agent.max_concurrency
    success = (local.recent_ok + 1) / (local.recent_total + 2)
    latency = (
        1.0
        if local.mean_latency_ms is None
        else weights.latency_scale_ms / (weights.latency_scale_ms + local.mean_latency_ms)
    )
    total = weights.capacity * free + weights.success * success + weights.latency * latency
    reasons = (
        f"free capacity {free:.2f} ({local.running}/{agent.max_concurrency} running)",
        f"success rate {success:.2f} ({local.recent_ok}/{local.recent_total} recent)",
        "latency unknown"
        if local.mean_latency_ms is None
        else f"latency {local.mean_latency_ms:.1f} ms (score {latency:.2f})",
    )
    return total, reasons


def route(
    agents: Iterable[AgentView],
    local: Mapping[str, LocalView],
    need: Requirement,
    weights: Weights,
) -> Routing:
    """The agents able to take the task, best first (ties: fewer running, then id)."""
    candidates: list[tuple[float, int, str, Candidate]] = []
    passed_over: dict[str, str] = {}
    empty = LocalView()
    for agent in agents:
        mine = local.get(agent.agent_id, empty)
        refused = refusal(agent, mine, need)
        if refused is not None:
            passed_over[agent.agent_id] = refused
            continue
        total, reasons = score(agent, mine, weights)
        matched = f"matches {need.describe()}"
        candidate = Candidate(agent, round(total, 4), (matched, *reasons))
        candidates.append((-total, mine.running, agent.agent_id, candidate))
    candidates.sort(key=lambda item: item[:3])
    return Routing(tuple(item[3] for item in candidates), passed_over)
