"""A compiled workflow graph's own nodes and routers, stepped without LangGraph's loop.

A replay re-drives thousands of runs, and LangGraph's Pregel loop (a task, a merged
config, callbacks, a stream and checkpoint bookkeeping per node) was about 60% of a
replayed node's CPU: more than the node's own work. ``DirectGraph`` runs the very
functions ``graph.build_graph`` compiled, taken from the compiled graph (so a changed
router or node is the one that runs), and schedules them by LangGraph's superstep rules,
restated here:

- a step runs every node the previous step triggered, concurrently (one alone runs in
  the caller's task), each over the state as it was when the step began;
- a node's returned keys that are state keys are its writes; a plain edge triggers its
  target; a router sees the state with its own node's writes applied and triggers the
  targets it returns (END: none);
- a join (an edge from several nodes) triggers its target once every source has run
  since the target last ran;
- the step's writes are applied in node-name order (the last write of a key wins);
- a node that fails cancels the step's others and its error is the graph's;
- a step beyond ``recursion_limit - 1`` raises ``GraphRecursionError``.

A graph using anything else LangGraph offers (``Send``, deferred nodes, other reducers,
retry or cache policies, injected arguments) is not stepped here: ``direct`` returns
None and the replay goes through LangGraph. The executor's replay tests record runs
through LangGraph and verify them through this: a LangGraph release that schedules
differently shows up there as a divergence (``--through-langgraph`` replays through
LangGraph itself, to check a release on your own history).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from langgraph.channels.binop import BinaryOperatorAggregate
from langgraph.constants import END, START
from langgraph.errors import ErrorCode, GraphRecursionError, InvalidUpdateError
from langgraph.errors import create_error_message as _error_message

from chiffon.executor import graph as executor_graph

try:  # where LangGraph keeps a node's function: private, so it may move in a release
    from langgraph._internal._runnable import RunnableCallable
except ImportError:  # pragma: no cover — then every graph goes through LangGraph
    RunnableCallable = None  # type: ignore[assignment,misc]

Call = Callable[[dict[str, Any], Any], Awaitable[Any]]
Join = tuple[tuple[str, ...], str]  # its sources, its target
DEFAULT_RECURSION_LIMIT = 25  # LangGraph's, when the config names none


@dataclass(frozen=True)
class _Node:
    name: str
    call: Call
    targets: tuple[str, ...]  # plain edges
    routers: tuple[tuple[Call, Mapping[Any, str] | None], ...]  # conditional edges
    joins: tuple[Join, ...]  # joins this node is a source of


class DirectGraph:
    """``ainvoke(input, config)`` as the compiled graph's, stepped here (see the module)."""

    def __init__(
        self, keys: frozenset[str], nodes: dict[str, _Node], entries: tuple[str, ...]
    ) -> None:
        self.keys = keys
        self.nodes = nodes
        self.entries = entries
        self._joins_into: dict[str, tuple[Join, ...]] = {}
        for node in nodes.values():
            for join in node.joins:
                into = self._joins_into.get(join[1], ())
                if join not in into:
                    self._joins_into[join[1]] = (*into, join)

    async def ainvoke(self, input: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        limit = int(config.get("recursion_limit", DEFAULT_RECURSION_LIMIT))
        state = {key: value for key, value in input.items() if key in self.keys}
        triggered = set(self.entries)
        barriers: dict[Join, set[str]] = {}
        step = 0
        while triggered:
            if step >= limit - 1:
                raise GraphRecursionError(
                    f"Recursion limit of {limit} reached without hitting a stop condition."
                )
            names = sorted(triggered)
            done = await self._step(names, state, config)
            for name in names:
                for join in self._joins_into.get(name, ()):
                    if len(barriers.get(join, ())) == len(join[0]):
                        del barriers[join]  # consumed by the run it triggered
            triggered = set()
            for name in names:
                writes, targets = done[name]
                state.update(writes)
                triggered.update(targets)
                for join in self.nodes[name].joins:
                    seen = barriers.setdefault(join, set())
                    if name not in seen:
                        seen.add(name)
                        if len(seen) == len(join[0]):
                            triggered.add(join[1])
            step += 1
        return state

    async def _step(
        self, names: list[str], state: dict[str, Any], config: Mapping[str, Any]
    ) -> dict[str, tuple[dict[str, Any], list[str]]]:
        if len(names) == 1:
            return {names[0]: await self._run(self.nodes[names[0]], dict(state), config)}
        tasks = {
            name: asyncio.ensure_future(self._run(self.nodes[name], dict(state), config))
            for name in names
        }
        try:
            pending: set[asyncio.Future[Any]] = set(tasks.values())
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed = next(
                    (t for t in finished if not t.cancelled() and t.exception() is not None),
                    None,
                )
                if failed is not None:
                    for other in pending:
                        other.cancel()
                    raise failed.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            for task in tasks.values():
                task.cancel()
            raise
        return {name: task.result() for name, task in tasks.items()}

    async def _run(
        self, node: _Node, state: dict[str, Any], config: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        returned = await node.call(state, config)
        if returned is None:
            writes: dict[str, Any] = {}
        elif isinstance(returned, dict):
            writes = {key: value for key, value in returned.items() if key in self.keys}
        else:
            raise InvalidUpdateError(
                _error_message(
                    message=f"Expected dict, got {returned}",
                    error_code=ErrorCode.INVALID_GRAPH_NODE_RETURN_VALUE,
                )
            )
        targets = list(node.targets)
        if node.routers:
            fresh = {**state, **writes}
            for route, ends in node.routers:
                chosen = await route(fresh, config)
                for choice in chosen if isinstance(chosen, (list, tuple)) else [chosen]:
                    target = ends[choice] if ends else choice
                    if target is None or target == START:
                        raise ValueError("Branch did not return a valid destination")
                    if target != END:
                        targets.append(target)
        return writes, targets


_compiled: weakref.WeakKeyDictionary[Any, DirectGraph | None] = weakref.WeakKeyDictionary()


def direct(compiled: Any) -> DirectGraph | None:
    """The compiled graph, stepped here; None when it uses what only LangGraph does."""
    if compiled in _compiled:
        return _compiled[compiled]
    try:
        found = _build(compiled)
    except AttributeError:  # a LangGraph release that keeps its graphs otherwise
        found = None
    try:
        _compiled[compiled] = found
    except TypeError:  # not weakly referable: not a compiled graph
        return None
    return found


def _call(runnable: Any) -> Call | None:
    """The coroutine function behind a node or a router, called as LangGraph calls it
    (the state, and the config when it takes one), or None if it takes anything else."""
    if RunnableCallable is None or not isinstance(runnable, RunnableCallable):
        return None
    if runnable.afunc is None:
        return None
    accepts = set(runnable.func_accepts)
    if not accepts <= {"config"}:
        return None
    afunc = runnable.afunc
    if accepts:
        return lambda state, config: afunc(state, config=config)
    return lambda state, config: afunc(state)


def _build(compiled: Any) -> DirectGraph | None:
    builder = getattr(compiled, "builder", None)
    if builder is None or builder.managed or START in builder.branches:
        return None
    for channel in builder.channels.values():
        if not (
            isinstance(channel, BinaryOperatorAggregate)
            and channel.operator is executor_graph._replace
        ):
            return None
    edges: set[tuple[str, str]] = set(builder.edges)
    nodes: dict[str, _Node] = {}
    for name, spec in builder.nodes.items():
        call = _call(spec.runnable)
        if (
            call is None
            or spec.defer
            or spec.retry_policy
            or spec.cache_policy
            or spec.ends
            or spec.input_schema is not builder.state_schema
        ):
            return None
        routers: list[tuple[Call, Mapping[Any, str] | None]] = []
        for branch in builder.branches.get(name, {}).values():
            route = _call(branch.path)
            if route is None or branch.input_schema not in (None, builder.state_schema):
                return None
            routers.append((route, branch.ends))
        nodes[name] = _Node(
            name=name,
            call=call,
            targets=tuple(sorted(end for start, end in edges if start == name and end != END)),
            routers=tuple(routers),
            joins=tuple(
                (tuple(starts), end)
                for starts, end in sorted(builder.waiting_edges)
                if name in starts and end != END
            ),
        )
    entries = tuple(sorted(end for start, end in edges if start == START and end != END))
    return DirectGraph(frozenset(builder.channels), nodes, entries)
