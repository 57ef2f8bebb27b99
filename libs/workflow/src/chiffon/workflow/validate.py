"""Cross-reference and graph checks on a structurally valid spec.

Every check appends to one list, so a user sees all problems at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import Loc, SpecIssue, did_you_mean, issue
from .expressions import Expression, ExpressionError, compile_expression
from .spec_types import (
    END,
    MEMORY_VARIABLE_PREFIX,
    START,
    AgentNode,
    ApprovalNode,
    Edge,
    LlmNode,
    SetNode,
    _strings,
)
from .templates import Template, TemplateError, parse_template, templated_task

if TYPE_CHECKING:
    from .model import WorkflowSpec


def check_spec(spec: WorkflowSpec) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    ids = _check_nodes(spec, issues)
    _check_edges(spec, ids, issues)
    dangling = any(i.loc[:1] == ("edges",) or i.loc[-1:] == ("on_reject",) for i in issues)
    _check_variables(spec, issues)
    _check_memory(spec, issues)
    _check_outputs(spec, issues)
    if spec.nodes and not dangling:
        _check_graph(spec, issues)
    return issues


def _check_nodes(spec: WorkflowSpec, issues: list[SpecIssue]) -> list[str]:
    if not spec.nodes:
        issues.append(issue(("nodes",), "a workflow needs at least one node"))
    first: dict[str, int] = {}
    for i, node in enumerate(spec.nodes):
        if node.id in first:
            issues.append(
                issue(
                    ("nodes", i, "id"),
                    f"duplicate node id {node.id!r} (first used by nodes[{first[node.id]}])",
                )
            )
        else:
            first[node.id] = i
    ids = list(first)
    for i, node in enumerate(spec.nodes):
        if isinstance(node, LlmNode) and node.model is None and spec.defaults.model is None:
            issues.append(
                issue(
                    ("nodes", i, "model"), "no model: set 'model' on the node or 'defaults.model'"
                )
            )
        if (
            isinstance(node, ApprovalNode)
            and node.on_reject != "fail"
            and node.on_reject not in first
        ):
            issues.append(
                issue(
                    ("nodes", i, "on_reject"),
                    f"unknown node {node.on_reject!r}{did_you_mean(node.on_reject, ids)}; "
                    f"expected a node id or 'fail'",
                )
            )
    return ids


def _check_edges(spec: WorkflowSpec, ids: list[str], issues: list[SpecIssue]) -> None:
    known = set(ids)
    for i, edge in enumerate(spec.edges):
        if len(set(edge.from_)) != len(edge.from_):
            issues.append(issue(("edges", i, "from"), "a join lists the same node twice"))
        for k, source in enumerate(edge.from_):
            loc: Loc = ("edges", i, "from", k) if edge.is_join else ("edges", i, "from")
            if source == END:
                issues.append(issue(loc, "END cannot be the source of an edge"))
            elif source == START:
                _check_entry_edge(i, edge, loc, issues)
            elif source not in known:
                issues.append(issue(loc, f"unknown node {source!r}{did_you_mean(source, ids)}"))
        if edge.to == START:
            issues.append(
                issue(
                    ("edges", i, "to"),
                    "START cannot be the target of an edge: it is where the run begins; "
                    "to run a node again, point the edge at that node",
                )
            )
        elif edge.to != END and edge.to not in known:
            issues.append(
                issue(
                    ("edges", i, "to"),
                    f"unknown node {edge.to!r}{did_you_mean(edge.to, [*ids, END])}",
                )
            )


def _check_entry_edge(i: int, edge: Edge, loc: Loc, issues: list[SpecIssue]) -> None:
    """``{from: START, to: node}`` declares where the run starts: one plain edge to a node."""
    if edge.is_join:
        issues.append(issue(loc, "START cannot be part of a join: write {from: START, to: ...}"))
    elif edge.to == END:
        issues.append(issue(("edges", i, "to"), "an edge from START must lead to a node, not END"))
    for key in ("when", "max_iterations"):
        if getattr(edge, key) is not None:
            issues.append(
                issue(
                    ("edges", i, key),
                    f"an edge from START always fires: it cannot have '{key}'",
                )
            )


def _check_variables(spec: WorkflowSpec, issues: list[SpecIssue]) -> None:
    known = spec.state_keys()
    known_set = set(known)
    for loc, names in _references(spec):
        # A node's texts may also read the memory it declares (``{memory_<name>}``).
        reads = _memory_variables(spec, loc)
        for name in sorted(names - known_set - set(reads)):
            hint = did_you_mean(name, [*known, *reads])
            if name.startswith(MEMORY_VARIABLE_PREFIX) and not hint:
                hint = (
                    f"; to read memory, declare it on the node: memory: "
                    f"{{read: ['<namespace>:*:*:{name.removeprefix(MEMORY_VARIABLE_PREFIX)}']}}"
                )
            issues.append(issue(loc, f"unknown variable {name!r}{hint}"))


def _memory_variables(spec: WorkflowSpec, loc: Loc) -> tuple[str, ...]:
    if len(loc) < 2 or loc[0] != "nodes" or not isinstance(loc[1], int):
        return ()
    memory = spec.nodes[loc[1]].memory
    return tuple(memory.patterns()) if memory is not None else ()


def _check_memory(spec: WorkflowSpec, issues: list[SpecIssue]) -> None:
    """A node writes only fields it writes, under a namespace it can name, and its reads
    never hide a state key of the same name."""
    keys = set(spec.state_keys())
    for i, node in enumerate(spec.nodes):
        memory = node.memory
        if memory is None:
            continue
        writes = spec.writes(node)
        for k, name in enumerate(memory.write):
            if name not in writes:
                issues.append(
                    issue(
                        ("nodes", i, "memory", "write", k),
                        f"{name!r} is not a field this node writes{did_you_mean(name, writes)}; "
                        f"it writes: {', '.join(writes)}",
                    )
                )
        if memory.write and memory.namespace is None and not isinstance(node, AgentNode):
            issues.append(
                issue(
                    ("nodes", i, "memory", "namespace"),
                    "a namespace is needed to write memory from a "
                    f"{node.type} node (agent nodes write under the agent's name): "
                    "memory: {namespace: <name>, write: [...]}",
                )
            )
        for k, variable in enumerate(memory.patterns()):
            if variable in keys:
                issues.append(
                    issue(
                        ("nodes", i, "memory", "read", k),
                        f"the read fills {{{variable}}}, which is also a state key; "
                        "rename the state key",
                    )
                )


def _references(spec: WorkflowSpec) -> Iterator[tuple[Loc, frozenset[str]]]:
    """The variables each template and condition reads. One that does not compile is
    passed over: it was reported already (see ``SKIP_TEXTS``)."""
    for loc, text, compile_text in _texts(spec):
        try:
            yield loc, compile_text(text).names
        except (TemplateError, ExpressionError):
            continue


def _texts(
    spec: WorkflowSpec,
) -> Iterator[tuple[Loc, str, Callable[[str], Template | Expression]]]:
    for i, node in enumerate(spec.nodes):
        base: Loc = ("nodes", i)
        if isinstance(node, LlmNode):
            if node.system is not None:
                yield (*base, "system"), node.system, parse_template
            yield (*base, "prompt"), node.prompt, parse_template
        elif isinstance(node, ApprovalNode):
            yield (*base, "message"), node.message, parse_template
        elif isinstance(node, AgentNode):
            for sub, text in _strings(templated_task(node.task), ()):
                yield (*base, "task", *sub), text, parse_template
        elif isinstance(node, SetNode):
            for key, src in node.values.items():
                yield (*base, "values", key), src, compile_expression
    for i, edge in enumerate(spec.edges):
        if edge.when is not None:
            yield ("edges", i, "when"), edge.when, compile_expression


def _check_outputs(spec: WorkflowSpec, issues: list[SpecIssue]) -> None:
    if spec.outputs is None:
        return
    keys = spec.state_keys()
    for k, name in enumerate(spec.outputs):
        if name not in keys:
            issues.append(
                issue(
                    ("outputs", k),
                    f"{name!r} is not a state key{did_you_mean(name, keys)}; "
                    "outputs must name inputs or node output fields",
                )
            )


# --- graph -----------------------------------------------------------------------------


class _Arc:
    """One source -> target step of an edge (a join gives one arc per source)."""

    __slots__ = ("source", "target", "edge", "breakable")

    def __init__(self, source: str, target: str, edge: int | None, breakable: bool) -> None:
        self.source, self.target, self.edge, self.breakable = source, target, edge, breakable


def _arcs(spec: WorkflowSpec) -> list[_Arc]:
    arcs = [
        _Arc(s, e.to, i, e.when is not None or e.max_iterations is not None)
        for i, e in enumerate(spec.edges)
        for s in e.from_
        if e.to != END and s != START
    ]
    arcs += [
        _Arc(n.id, n.on_reject, None, True)
        for n in spec.nodes
        if isinstance(n, ApprovalNode) and n.on_reject != "fail"
    ]
    return arcs


def _check_graph(spec: WorkflowSpec, issues: list[SpecIssue]) -> None:
    ids = list(dict.fromkeys(n.id for n in spec.nodes))
    arcs = _arcs(spec)
    succ: dict[str, list[_Arc]] = {n: [] for n in ids}
    for arc in arcs:
        succ[arc.source].append(arc)

    entries = spec.entry_nodes()
    if not entries:
        issues.append(
            issue(
                ("edges",),
                "no entry node: every node has an incoming edge, so the run cannot "
                "start; at least one node must have no incoming edge",
            )
        )
    else:
        seen = set(entries)
        stack = list(entries)
        while stack:
            for arc in succ[stack.pop()]:
                if arc.target not in seen:
                    seen.add(arc.target)
                    stack.append(arc.target)
        index = {n.id: i for i, n in reversed(list(enumerate(spec.nodes)))}
        for node_id in ids:
            if node_id not in seen:
                issues.append(
                    issue(
                        ("nodes", index[node_id]),
                        f"node {node_id!r} can never run: it is not reachable from the entry "
                        f"nodes ({', '.join(entries)})",
                    )
                )

    outgoing: dict[str, list[Edge]] = {n: [] for n in ids}
    for edge in spec.edges:
        for source in edge.from_:
            if source != START:
                outgoing[source].append(edge)
    components = _strongly_connected(ids, succ)
    member = {node_id: k for k, component in enumerate(components) for node_id in component}
    for component in components:
        if len(component) == 1 and not any(a.target == component[0] for a in succ[component[0]]):
            continue  # a node that is not in a loop
        inside = set(component)
        internal = [a for n in component for a in succ[n] if a.target in inside]
        first_edge = min((a.edge for a in internal if a.edge is not None), default=None)
        where: Loc = ("edges", first_edge) if first_edge is not None else ("nodes",)
        cycle = _unbreakable_cycle(component, internal)
        if cycle is not None:
            numbered = [(a.edge, k) for k, a in enumerate(cycle) if a.edge is not None]
            edge_index, turn = min(numbered)
            cycle = cycle[turn:] + cycle[:turn]
            path = " -> ".join([*(a.source for a in cycle), cycle[0].source])
            issues.append(
                issue(
                    ("edges", edge_index),
                    f"loop {path} never stops: none of its edges has 'when' or 'max_iterations'",
                )
            )
            continue
        limited = any(
            a.edge is not None and spec.edges[a.edge].max_iterations is not None for a in internal
        )
        leaves = any(
            e.to == END or member.get(e.to) != member[component[0]]
            for n in component
            for e in outgoing[n]
        ) or any(isinstance(spec.node(n), ApprovalNode) for n in component)
        if not limited and not leaves:
            names = ", ".join(n for n in ids if n in inside)
            issues.append(
                issue(
                    where,
                    f"loop through {names} has no exit: no edge leaves it and none of its edges "
                    f"has 'max_iterations'; add an edge out of the loop (e.g. to END) or a limit",
                )
            )


def _strongly_connected(ids: list[str], succ: dict[str, list[_Arc]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (specs can hold thousands of nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in ids:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, pos = work.pop()
            if pos == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            arcs = succ[node]
            if pos < len(arcs):
                work.append((node, pos + 1))
                target = arcs[pos].target
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return result


def _unbreakable_cycle(component: list[str], internal: list[_Arc]) -> list[_Arc] | None:
    """A cycle made only of unconditional, unlimited edges, if there is one."""
    succ: dict[str, list[_Arc]] = {n: [] for n in component}
    for arc in internal:
        if not arc.breakable:
            succ[arc.source].append(arc)
    color: dict[str, int] = {}
    for root in component:
        if root in color:
            continue
        path: list[_Arc] = []
        work: list[tuple[str, int]] = [(root, 0)]
        color[root] = 1
        while work:
            node, pos = work.pop()
            if pos < len(succ[node]):
                work.append((node, pos + 1))
                arc = succ[node][pos]
                if color.get(arc.target) == 1:
                    start = next(
                        (k for k, a in enumerate(path) if a.source == arc.target), len(path)
                    )
                    return [*path[start:], arc]
                if arc.target not in color:
                    color[arc.target] = 1
                    path.append(arc)
                    work.append((arc.target, 0))
            else:
                color[node] = 2
                if path:
                    path.pop()
    return None
