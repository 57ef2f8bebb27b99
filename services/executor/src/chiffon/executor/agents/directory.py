"""The agents this executor replica can send tasks to.

Each replica folds the AGENTS stream's events in memory (from its first event, then
live: ``follow``), with ``evolve_agent``, a pure function. On top of that it keeps its
own marks: the tasks it runs on each agent, the agents it failed to reach (unavailable
to it at once, whatever the registry still says, until the agent registers or comes
back again, or ``unreachable_hold`` seconds pass), and the outcome and latency of its
recent tasks per agent. Routing (``routing.route``) reads both.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chiffon.core.logging import get_logger
from chiffon.eventstore import EventStore, EventStoreError, RecordedEvent
from chiffon.executor.agents.routing import (
    AgentView,
    LocalView,
    Requirement,
    Routing,
    Weights,
    route,
)

log = get_logger(__name__)

CONTEXT = "AGENTS"
AGENT_EVENT_TYPES = frozenset(
    {
        "agent.registered",
        "agent.capacity_changed",
        "agent.went_offline",
        "agent.came_back",
        "agent.deregistered",
    }
)
RECENT = 20  # tasks per agent the success rate and latency are taken over


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_resources(resources: Any) -> tuple[float | None, tuple[float, ...]]:
    """CPU cores and each GPU's VRAM (bytes) from an event's ``resources``: either the
    registry's shape (``cpu_cores``, ``gpus: [{vram_bytes}]``) or flat numbers
    (``cpu_cores``/``cpu``, ``gpu_vram_bytes``/``gpu_memory_bytes`` for one GPU)."""
    if not isinstance(resources, Mapping):
        return None, ()
    cpu = _number(resources.get("cpu_cores"))
    if cpu is None:
        cpu = _number(resources.get("cpu"))
    gpus: list[float] = []
    listed = resources.get("gpus")
    if isinstance(listed, list):
        for gpu in listed:
            vram = _number(gpu.get("vram_bytes")) if isinstance(gpu, Mapping) else None
            if vram is not None:
                gpus.append(vram)
    else:
        for key in ("gpu_vram_bytes", "gpu_memory_bytes"):
            vram = _number(resources.get(key))
            if vram is not None and vram > 0:
                count = int(_number(resources.get("gpu_count")) or 1)
                gpus.extend([vram] * max(1, min(count, 64)))
                break
    return cpu, tuple(gpus)


def evolve_agent(
    agent: AgentView | None, agent_id: str, event_type: str, payload: Any, sequence: int
) -> AgentView | None:
    """The agent after one of its events (None: not known, or an event before any
    registration, which there is nothing to apply to). ``agent_id`` is the aggregate
    id; the view carries the id the agent chose (the one its task tokens name)."""
    if event_type == "agent.registered":
        cpu, gpus = read_resources(getattr(payload, "resources", None))
        listed = tuple(
            float(vram)
            for gpu in getattr(payload, "gpus", None) or ()
            if (vram := _number(getattr(gpu, "vram_bytes", None))) is not None
        )
        labels = getattr(payload, "labels", None)
        return AgentView(
            agent_id=getattr(payload, "agent_id", None) or agent_id,
            name=payload.name,
            address=payload.address,
            capabilities=frozenset(payload.capabilities),
            labels=dict(labels) if isinstance(labels, Mapping) else {},
            cpu_cores=cpu,
            gpu_vram_bytes=listed or gpus,
            max_concurrency=max(1, int(payload.max_concurrency)),
            status="online",
            version=sequence,
        )
    if agent is None:
        return None
    if event_type == "agent.capacity_changed":
        cpu, gpus = read_resources(payload.resources)
        return replace(
            agent,
            cpu_cores=cpu if cpu is not None else agent.cpu_cores,
            gpu_vram_bytes=gpus or agent.gpu_vram_bytes,
            max_concurrency=max(1, int(payload.max_concurrency)),
            version=sequence,
        )
    if event_type == "agent.went_offline":
        return replace(agent, status="offline", version=sequence)
    if event_type == "agent.came_back":
        if agent.status == "deregistered":
            return replace(agent, version=sequence)
        return replace(agent, status="online", version=sequence)
    if event_type == "agent.deregistered":
        return replace(agent, status="deregistered", version=sequence)
    return agent


@dataclass
class _Local:
    running: int = 0
    unreachable_at: float | None = None  # monotonic time of the mark
    recent: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=RECENT))


class AgentDirectory:
    """The fold of the AGENTS stream plus this replica's own marks (see the module)."""

    def __init__(
        self,
        store: EventStore | None = None,
        *,
        weights: Weights = Weights(),
        unreachable_hold: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.weights = weights
        self.unreachable_hold = unreachable_hold
        self.clock = clock
        self.agents: dict[str, AgentView] = {}
        self.position = 0
        self._local: dict[str, _Local] = {}
        self._caught_up = asyncio.Event()
        self._target = 0
        self._next_change = asyncio.Event()
        self._offline: dict[str, asyncio.Event] = {}  # agent id -> set when it goes offline
        self._task: asyncio.Task[None] | None = None

    # -- the stream ------------------------------------------------------------------

    def apply(self, recorded: RecordedEvent) -> None:
        """Fold one stored event of the AGENTS stream (others are skipped)."""
        self.position = max(self.position, recorded.sequence)
        if recorded.type in AGENT_EVENT_TYPES:
            agent_id = recorded.envelope.aggregate_id
            current = self.agents.get(agent_id)
            updated = evolve_agent(
                current, agent_id, recorded.type, recorded.payload, recorded.sequence
            )
            if updated is not None:
                self.agents[agent_id] = updated
                if recorded.type == "agent.went_offline":
                    gone = self._offline.pop(updated.agent_id, None)
                    if gone is not None:
                        gone.set()  # its tasks here are interrupted (``went_offline``)
                if recorded.type in ("agent.registered", "agent.came_back"):
                    mark = self._local.get(updated.agent_id)
                    if mark is not None:
                        mark.unreachable_at = None  # announced itself again
                self._signal_change()
        if self.position >= self._target:
            self._caught_up.set()

    async def start(self) -> None:
        """Follow the AGENTS stream from its first event, then live (a task)."""
        assert self.store is not None
        try:
            self._target = await self.store.last_sequence(CONTEXT)
        except EventStoreError as error:
            log.warning("agents.directory_position_unknown", error=str(error))
            self._target = 0
        if self._target == 0:
            self._caught_up.set()
        self._task = asyncio.create_task(self._follow(), name="executor:agents")

    async def _follow(self) -> None:
        assert self.store is not None
        while True:
            try:
                async for recorded in self.store.subscribe(CONTEXT, start=self.position + 1):
                    self.apply(recorded)
            except EventStoreError as error:
                log.warning("agents.directory_follow_failed", error=str(error))
            except Exception as error:  # noqa: BLE001 - a dead follower would freeze routing
                # Anything NATS answers that the store does not name (an API error under
                # load) must not end the fold: every task would then wait for agents
                # this replica no longer hears of.
                log.error("agents.directory_follow_broke", error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(1.0)  # then follow again from where the fold is

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def caught_up(self, timeout: float) -> bool:
        """Whether the fold has reached the stream's end as of start-up (waits a while)."""
        if self._caught_up.is_set():
            return True
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def watch(self) -> asyncio.Event:
        """An event set at the next change of the agents or of local capacity (the seam
        for waiting on capacity). Take it before routing, then wait on it: a change in
        between is not missed."""
        return self._next_change

    def went_offline(self, agent_id: str) -> asyncio.Event:
        """An event set when the registry records the agent offline (not when it
        deregisters: an agent shutting down deregisters first, then finishes its tasks)."""
        event = self._offline.get(agent_id)
        if event is None:
            event = self._offline[agent_id] = asyncio.Event()
        return event

    def _signal_change(self) -> None:
        changed, self._next_change = self._next_change, asyncio.Event()
        changed.set()

    # -- this replica's marks ---------------------------------------------------------

    def _mark(self, agent_id: str) -> _Local:
        mark = self._local.get(agent_id)
        if mark is None:
            mark = self._local[agent_id] = _Local()
        return mark

    def started(self, agent_id: str) -> None:
        self._mark(agent_id).running += 1

    def finished(self, agent_id: str, *, ok: bool | None, latency_ms: float | None) -> None:
        """A task here on the agent ended (``ok`` None: no outcome to count)."""
        mark = self._mark(agent_id)
        mark.running = max(0, mark.running - 1)
        if ok is not None:
            mark.recent.append((ok, latency_ms if latency_ms is not None else -1.0))
        self._signal_change()

    def unreachable(self, agent_id: str) -> None:
        """The agent could not be reached, or its stream broke: not routed to from here
        until it registers or comes back again (or ``unreachable_hold`` passes)."""
        mark = self._mark(agent_id)
        mark.unreachable_at = self.clock()
        mark.recent.append((False, -1.0))
        self._signal_change()

    def local_view(self, agent_id: str) -> LocalView:
        mark = self._local.get(agent_id)
        if mark is None:
            return LocalView()
        unreachable = mark.unreachable_at is not None
        if unreachable and self.clock() - (mark.unreachable_at or 0.0) >= self.unreachable_hold:
            mark.unreachable_at = None
            unreachable = False
        latencies = [latency for _, latency in mark.recent if latency >= 0]
        return LocalView(
            running=mark.running,
            unreachable=unreachable,
            recent_ok=sum(1 for ok, _ in mark.recent if ok),
            recent_total=len(mark.recent),
            mean_latency_ms=sum(latencies) / len(latencies) if latencies else None,
        )

    def route(self, need: Requirement, *, exclude: frozenset[str] = frozenset()) -> Routing:
        agents = [a for a in self.agents.values() if a.agent_id not in exclude]
        local = {a.agent_id: self.local_view(a.agent_id) for a in agents}
        return route(agents, local, need, self.weights)
