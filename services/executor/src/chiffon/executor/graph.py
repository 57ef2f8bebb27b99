"""A workflow spec becomes a LangGraph ``StateGraph``: compilation and routing, only.

The graph is compiled once per workflow version. Per-run things (the event log, the
loop counters, the model gateway) come in through ``config["configurable"]["chiffon"]``,
an object with the ``nodes.Execution`` interface (``execution.RunExecution``); what a
node does is the node runners' (``nodes``), which record every step as events.

Durability is by replay (Temporal's model, applied to LangGraph): a resumed run runs
the graph again from the start over the run's recorded events. A node whose k-th
execution is already completed in the events returns the recorded outputs without
running; routing is a pure function of the state, so the replay retraces the same path,
re-deriving loop counters and join progress, and the first node without a recorded
outcome is where real work resumes.

The run starts at ``spec.entry_nodes()``: the targets of ``{from: START, to: ...}``
edges when the file declares them, else the nodes without an incoming edge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END as LG_END
from langgraph.graph import START as LG_START
from langgraph.graph import StateGraph

from chiffon.executor.nodes import (
    Execution,
    NodeFailure,
    NodePlan,
    error_info,
    execute_node,
)
from chiffon.workflow import (
    END,
    AnyNode,
    ApprovalNode,
    Edge,
    ExpressionError,
    WorkflowSpec,
    compile_expression,
)


def _replace(_old: Any, new: Any) -> Any:
    return new


# -- the graph ------------------------------------------------------------------------


def build_graph(spec: WorkflowSpec) -> Any:
    """Compile ``spec`` into a LangGraph graph (no checkpointer: the events are the log)."""
    fields: dict[str, Any] = {key: Annotated[Any, _replace] for key in spec.state_keys()}
    state_type = TypedDict(f"{spec.name.replace('-', '_')}_state", fields)  # type: ignore[misc]
    graph: StateGraph[Any] = StateGraph(state_type)
    for node in spec.nodes:
        graph.add_node(node.id, _node_function(spec, node))
    for entry in spec.entry_nodes():
        graph.add_edge(LG_START, entry)

    indexed = list(enumerate(spec.edges))
    join_sources = {s for _, e in indexed if e.is_join for s in e.from_}
    for node in spec.nodes:
        simple = [(i, e) for i, e in indexed if not e.is_join and e.from_[0] == node.id]
        rejects = isinstance(node, ApprovalNode)
        if simple and not rejects and all(_unconditional(e) for _, e in simple):
            # Plain edges: LangGraph follows them without calling a router.
            for target in dict.fromkeys(_target(e.to) for _, e in simple):
                graph.add_edge(node.id, target)
        elif simple or rejects:
            targets = {_target(e.to) for _, e in simple} | {LG_END}
            if isinstance(node, ApprovalNode) and node.on_reject != "fail":
                targets.add(node.on_reject)
            graph.add_conditional_edges(node.id, _router(spec, node, simple), sorted(targets))
        elif node.id not in join_sources:
            graph.add_edge(node.id, LG_END)
    for i, edge in indexed:
        if not edge.is_join:
            continue
        if edge.when is None and edge.max_iterations is None:
            graph.add_edge(list(edge.from_), _target(edge.to))
        else:
            gate = f"__join_{i}"
            graph.add_node(gate, _noop)
            graph.add_edge(list(edge.from_), gate)
            graph.add_conditional_edges(
                gate, _router(spec, None, [(i, edge)]), [_target(edge.to), LG_END]
            )
    return graph.compile()


def _unconditional(edge: Edge) -> bool:
    return edge.when is None and edge.max_iterations is None


def _target(to: str) -> str:
    return LG_END if to == END else to


async def _noop(state: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _router(
    spec: WorkflowSpec, node: AnyNode | None, edges: list[tuple[int, Edge]]
) -> Callable[[Mapping[str, Any], RunnableConfig], Awaitable[list[str]]]:
    conditions = {i: compile_expression(e.when) for i, e in edges if e.when is not None}

    # A coroutine, so LangGraph calls it on the event loop, not in a worker thread.
    async def route(state: Mapping[str, Any], config: RunnableConfig) -> list[str]:
        ctx: Execution = config["configurable"]["chiffon"]
        if isinstance(node, ApprovalNode) and state.get("approved") is False:
            if node.on_reject == "fail":
                comment = state.get("approval_comment")
                raise NodeFailure(
                    error_info(
                        "rejected",
                        f"approval {node.id!r} was rejected" + (f": {comment}" if comment else ""),
                        node.id,
                    )
                )
            return [node.on_reject]
        targets: list[str] = []
        for index, edge in edges:
            condition = conditions.get(index)
            if condition is not None:
                try:
                    fires = bool(condition.evaluate(state))
                except ExpressionError as error:
                    raise NodeFailure(
                        error_info(
                            "condition_error",
                            f"edges[{index}].when {edge.when!r}: {error}",
                            node.id if node is not None else None,
                        )
                    ) from None
                if not fires:
                    continue
            if not ctx.edge_fired(index, edge.max_iterations):
                continue
            target = _target(edge.to)
            if target not in targets:
                targets.append(target)
        return targets or [LG_END]

    return route


def _node_function(spec: WorkflowSpec, node: AnyNode) -> Callable[..., Any]:
    plan = NodePlan(spec, node)

    async def run_node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        ctx: Execution = config["configurable"]["chiffon"]
        ctx.enter()
        try:
            return await execute_node(ctx, plan, state)
        finally:
            ctx.leave()

    run_node.__name__ = f"node_{node.id}"
    return run_node
