"""Agent memory for workflow nodes: what a node declared it reads, and what it writes.

``recall`` runs before a node's runner: it reads the node's declared patterns and records
them on the run (``run.memory.read``) before the node uses them, or, when the run
already recorded them (a resumed or replayed run), takes the recorded values without
reading again. The values reach the node's templates and expressions as
``memory_<name>``.

``remember`` runs once the node's execution is completed in the run's events (also when
a replay finds it completed: the replica that completed it may have died before it
wrote): it appends ``memory.written`` to the namespace's aggregate, checked against the
version of the fold it decided on, and retried on a conflict (two runs writing one key:
the later append wins, and every reader sees the same order). A node execution that
wrote already (its ``run_id, node_id, iteration`` is in the fold) writes nothing again.

``AgentMemory`` keeps each namespace's fold in memory, brought up to date by reading
only what came since its version, so a read costs the new events, not the history.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from typing import Any

from chiffon.core.logging import get_logger
from chiffon.events import Actor, new_event
from chiffon.events.memory import (
    MemoryKey,
    MemoryKeyError,
    MemoryRead,
    MemoryState,
    MemoryValue,
    aggregate_id,
    check_namespace,
    check_value,
)
from chiffon.eventstore import AggregateKey, ConcurrencyConflict, EventStore, retry_on_conflict
from chiffon.executor.nodes.context import Execution, NodeFailure, error_info
from chiffon.executor.nodes.plan import NodePlan

MEMORY_ERROR = "memory_error"
MAX_FOLDS = 256  # namespaces whose fold one replica keeps (least recently used out)
log = get_logger(__name__)


class AgentMemory:
    """The namespaces' folds one process keeps, and their appends (see the module)."""

    def __init__(self, store: EventStore, actor: Actor | None = None) -> None:
        self.store = store
        self.actor = actor or Actor.service("executor")
        self._folds: OrderedDict[str, MemoryState] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, namespace: str) -> asyncio.Lock:
        lock = self._locks.get(namespace)
        if lock is None:
            lock = self._locks[namespace] = asyncio.Lock()
        return lock

    async def current(self, namespace: str) -> MemoryState:
        """The namespace as its events say it is now."""
        key = AggregateKey("memory", aggregate_id(namespace))
        async with self._lock(namespace):
            state = self._folds.pop(namespace, None) or MemoryState(namespace)
            events, version = await self.store.read_aggregate(key, after=state.version)
            for event in events:
                state.evolve(event.payload, event.sequence)
            state.version = max(state.version, version)
            self._folds[namespace] = state
            while len(self._folds) > MAX_FOLDS:
                self._folds.popitem(last=False)
            return state

    async def read(self, patterns: list[MemoryKey]) -> list[MemoryValue]:
        """The latest value under each pattern (a read that matched nothing: None)."""
        states = {ns: await self.current(ns) for ns in dict.fromkeys(p.namespace for p in patterns)}
        return [states[p.namespace].read(p) for p in patterns]

    async def write(
        self,
        namespace: str,
        *,
        workflow: str,
        node_id: str,
        run_id: str,
        iteration: int,
        values: dict[str, Any],
    ) -> int:
        """Remember ``values`` for one node execution; the number of keys written (0 when
        that execution wrote them already)."""
        key = AggregateKey("memory", aggregate_id(namespace))
        conflicted = False

        async def attempt() -> int:
            nonlocal conflicted
            # The fold this process holds is tried as it is: had anything been appended
            # since, the append would conflict and the next attempt reads it. That saves
            # a read per write (a node that reads then writes a key folded it just before).
            cached = None if conflicted else self._folds.get(namespace)
            state = cached if cached is not None else await self.current(namespace)
            payloads = state.writes(
                workflow=workflow,
                node_id=node_id,
                run_id=run_id,
                iteration=iteration,
                values=values,
            )
            if not payloads:
                return 0
            envelopes = [
                new_event(p, aggregate_id=key.aggregate_id, actor=self.actor, correlation_id=run_id)
                for p in payloads
            ]
            try:
                result = await self.store.append(
                    key,
                    envelopes,
                    expected_version=state.version,
                    idempotency_key=f"memory:{run_id}:{node_id}:{iteration}",
                )
            except ConcurrencyConflict:
                conflicted = True
                raise
            if result.all_duplicates:
                return 0
            async with self._lock(namespace):
                for payload, sequence in zip(payloads, result.sequences, strict=True):
                    state.evolve(payload, sequence)
            return len(payloads)

        return await retry_on_conflict(attempt, what=f"remembering in {namespace}")


_MEMORIES: weakref.WeakKeyDictionary[Any, AgentMemory] = weakref.WeakKeyDictionary()


def memory_of(store: EventStore) -> AgentMemory:
    """The process's memory folds for ``store`` (made on first use)."""
    memory = _MEMORIES.get(store)
    if memory is None:
        memory = _MEMORIES[store] = AgentMemory(store)
    return memory


async def recall(ctx: Execution, plan: NodePlan, iteration: int) -> dict[str, Any]:
    """The node's memory variables (``memory_<name>``) for this execution: recorded on
    the run first when read now, the recorded ones when the run read them before."""
    memory = plan.node.memory
    if memory is None or not memory.read:
        return {}
    patterns = memory.patterns()
    recorded = ctx.run.memory_reads.get((plan.node.id, iteration))
    if recorded is None:
        values = await ctx.interruptible(memory_of(ctx.store).read(list(patterns.values())))
        read = MemoryRead(node_id=plan.node.id, iteration=iteration, values=tuple(values))
        await ctx.append([read])
        recorded = ctx.run.memory_reads.get((plan.node.id, iteration), read)
    by_pattern = {v.pattern: v.value for v in recorded.values}
    return {variable: by_pattern.get(str(key)) for variable, key in patterns.items()}


async def remember(ctx: Execution, plan: NodePlan, iteration: int, outputs: dict[str, Any]) -> None:
    """Write the node's declared fields, if this execution completed (a node that failed
    and went on with ``on_error: continue`` remembers nothing)."""
    node = plan.node
    memory = node.memory
    if memory is None or not memory.write:
        return
    recorded = ctx.run.nodes.get((node.id, iteration))
    if recorded is None or recorded.completed is None:
        return
    namespace = memory.namespace or ctx.run.task_agents.get((node.id, iteration))
    try:
        if namespace is None:
            raise MemoryKeyError("no namespace: the node names none and no agent ran it")
        check_namespace(namespace)
        values = {name: outputs.get(name) for name in memory.write}
        for name, value in values.items():
            check_value(f"{namespace}:{plan.workflow}:{node.id}:{name}", value)
    except MemoryKeyError as error:
        raise NodeFailure(
            error_info(MEMORY_ERROR, f"{node.id}: cannot remember: {error}", node.id)
        ) from None
    written = await memory_of(ctx.store).write(
        namespace,
        workflow=plan.workflow,
        node_id=node.id,
        run_id=ctx.run.run_id,
        iteration=iteration,
        values=values,
    )
    if written:
        log.info(
            "memory.written",
            run_id=ctx.run.run_id,
            node_id=node.id,
            namespace=namespace,
            keys=list(values),
        )
