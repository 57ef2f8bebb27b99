"""``WorkflowSpec``: a whole workflow, checked across its nodes and edges on construction,
with the lookups the executor needs. Its parts (nodes, edges, defaults) are in ``spec_types``."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import (
    Field,
    PrivateAttr,
    model_validator,
)

from chiffon.events.limits import (
    WORKFLOW_VERSION_MAX,
)

from .errors import InputError, SpecError
from .expressions import Expression, compile_expression
from .spec_types import (
    BUILTIN_VARIABLES,
    DEFAULT_TIMEOUT_S,
    START,
    AgentNode,
    AnyNode,
    ApprovalNode,
    Budget,
    Defaults,
    Edge,
    InputSpec,
    LlmNode,
    Node,
    OnError,
    RetryPolicy,
    SetNode,
    Slug,
    VarName,
    _Model,
)
from .storable import describe, find_unstorable
from .templates import Template, parse_template
from .types import validate_value
from .validate import check_spec

# --- the spec --------------------------------------------------------------------------


class WorkflowSpec(_Model):
    """A validated workflow. Build it with ``load_spec`` or ``spec_from_dict``."""

    name: Slug
    version: int = Field(ge=1, le=WORKFLOW_VERSION_MAX)
    description: str | None = None
    inputs: dict[VarName, InputSpec] = {}
    defaults: Defaults = Defaults()
    budget: Budget | None = None
    outputs: tuple[VarName, ...] | None = None
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...] = ()

    _by_id: dict[str, AnyNode] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        for node in self.nodes:
            self._by_id.setdefault(node.id, node)

    @model_validator(mode="after")
    def _check_graph(self) -> WorkflowSpec:
        issues = check_spec(self)
        if issues:
            raise SpecError(issues)
        return self

    # -- identity --

    def canonical_json(self) -> str:
        """Stable JSON of what the author wrote (sorted keys, durations in seconds)."""
        data = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        """``sha256`` hex digest of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    # -- graph --

    def node(self, node_id: str) -> AnyNode:
        """The node with this id; ``KeyError`` if there is none."""
        try:
            return self._by_id[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in workflow {self.name!r}") from None

    def declares_entry(self) -> bool:
        """Whether an edge leaves ``START``: then the entries are declared, not inferred."""
        return any(START in e.from_ for e in self.edges)

    def entry_nodes(self) -> tuple[str, ...]:
        """Where a run starts, in file order: the targets of ``{from: START, to: ...}``
        edges when the file has any (as in LangGraph, so the first step can also be a
        loop's target); else the nodes with no incoming edge (``on_reject`` counts as one)."""
        if self.declares_entry():
            return tuple(
                dict.fromkeys(
                    e.to for e in self.edges if e.from_ == (START,) and e.to in self._by_id
                )
            )
        targets = {e.to for e in self.edges}
        targets |= {
            n.on_reject for n in self.nodes if isinstance(n, ApprovalNode) and n.on_reject != "fail"
        }
        return tuple(n.id for n in self.nodes if n.id not in targets)

    def outgoing(self, node_id: str) -> tuple[Edge, ...]:
        """Edges that list ``node_id`` among their sources, in file order."""
        return tuple(e for e in self.edges if node_id in e.from_)

    def incoming(self, node_id: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.to == node_id)

    # -- state --

    def output_fields(self, node: AnyNode | str) -> dict[str, str]:
        """The typed fields a node writes (``set`` nodes write untyped values: see ``writes``)."""
        n = self._resolve(node)
        if isinstance(n, LlmNode):
            return dict(n.output) if n.output else {n.id: "string"}
        if isinstance(n, AgentNode):
            return dict(n.output) if n.output else {n.id: "object"}
        if isinstance(n, ApprovalNode):
            return dict(BUILTIN_VARIABLES)
        return {}

    def writes(self, node: AnyNode | str) -> tuple[str, ...]:
        """State keys a node writes when it completes."""
        n = self._resolve(node)
        if isinstance(n, SetNode):
            return tuple(n.values)
        return tuple(self.output_fields(n))

    def state_keys(self) -> tuple[str, ...]:
        """Every key the state can hold: inputs, then each node's writes, in file order."""
        keys = dict.fromkeys(self.inputs)
        for n in self.nodes:
            keys.update(dict.fromkeys(self.writes(n)))
        return tuple(keys)

    def run_outputs(self) -> tuple[str, ...]:
        """State keys that form the run's result (``outputs``, or every state key)."""
        return self.outputs if self.outputs is not None else self.state_keys()

    def validate_inputs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check run inputs, coerce them to their types and fill defaults; ``InputError``."""
        # Before anything prints or stores them: a NUL or lone surrogate at any depth
        # (keys too) would stop the runs read model or fail to encode (issue 16).
        found = find_unstorable(values, ("inputs",))
        if found is not None:
            raise InputError([describe(*found)])
        problems = [
            f"unknown input {k!r}"
            + (f"; inputs are: {', '.join(self.inputs)}" if self.inputs else "")
            for k in values
            if k not in self.inputs
        ]
        result: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            if (
                name in values
                and values[name] is None
                and not spec.required
                and spec.default is None
            ):
                # ``default: null`` makes null the value when none is given, so null given is
                # accepted too: inputs once filled in check again (the executor checks the
                # stored ones when it starts the run; refusing them re-claimed it forever).
                result[name] = None
            elif name in values:
                try:
                    result[name] = validate_value(spec.type, values[name])
                except ValueError as exc:
                    problems.append(f"input {name!r}: {exc}")
            elif spec.required:
                problems.append(f"missing required input {name!r} ({spec.type})")
            else:
                result[name] = copy.deepcopy(spec.default)
        if problems:
            raise InputError(problems)
        return result

    def initial_state(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """A run's first state: every state key as ``None``, then the checked inputs."""
        state: dict[str, Any] = dict.fromkeys(self.state_keys())
        state.update(self.validate_inputs(inputs))
        return state

    # -- effective settings (node value, else ``defaults``, else built-in) --

    def effective_model(self, node: AnyNode | str) -> str | None:
        n = self._resolve(node)
        return (n.model or self.defaults.model) if isinstance(n, LlmNode) else None

    def effective_fallbacks(self, node: AnyNode | str) -> tuple[str, ...]:
        n = self._resolve(node)
        if not isinstance(n, LlmNode):
            return ()
        chosen = n.fallbacks if n.fallbacks is not None else self.defaults.fallbacks
        return chosen or ()

    def effective_retry(self, node: AnyNode | str) -> RetryPolicy:
        """Field by field: the node's ``retry``, over ``defaults.retry``, over 1 attempt."""
        n = self._resolve(node)
        if not isinstance(n, (LlmNode, AgentNode)):
            return RetryPolicy()
        merged: dict[str, Any] = {}
        for layer in (self.defaults.retry, n.retry):
            if layer is not None:
                _deep_merge(merged, layer.model_dump(exclude_unset=True))
        return RetryPolicy.model_validate(merged)

    def effective_timeout(self, node: AnyNode | str) -> float | None:
        """Seconds per attempt; ``None`` for approval and set nodes (no limit)."""
        n = self._resolve(node)
        if not isinstance(n, (LlmNode, AgentNode)):
            return None
        for value in (n.timeout, self.defaults.timeout):
            if value is not None:
                return value
        return DEFAULT_TIMEOUT_S

    def effective_on_error(self, node: AnyNode | str) -> OnError:
        n = self._resolve(node)
        if isinstance(n, (LlmNode, AgentNode)) and n.on_error is not None:
            return n.on_error
        if isinstance(n, (LlmNode, AgentNode)) and self.defaults.on_error is not None:
            return self.defaults.on_error
        return "fail"

    def effective_temperature(self, node: AnyNode | str) -> float | None:
        n = self._resolve(node)
        if not isinstance(n, LlmNode):
            return None
        return n.temperature if n.temperature is not None else self.defaults.temperature

    def effective_max_tokens(self, node: AnyNode | str) -> int | None:
        n = self._resolve(node)
        if not isinstance(n, LlmNode):
            return None
        return n.max_tokens if n.max_tokens is not None else self.defaults.max_tokens

    def effective_prefer_local_below(self, node: AnyNode | str) -> float | None:
        """The percentage of a budget's hard limit below which the node's zero-cost
        fallback is tried first (None: never)."""
        n = self._resolve(node)
        if not isinstance(n, LlmNode):
            return None
        if n.prefer_local_below is not None:
            return n.prefer_local_below
        return self.defaults.prefer_local_below

    def templates(self, node: AnyNode | str) -> dict[str, Template]:
        """The node's parsed templates by field (``prompt``, ``system``, ``message``)."""
        n = self._resolve(node)
        fields: dict[str, str | None] = {}
        if isinstance(n, LlmNode):
            fields = {"system": n.system, "prompt": n.prompt}
        elif isinstance(n, ApprovalNode):
            fields = {"message": n.message}
        return {k: parse_template(v) for k, v in fields.items() if v is not None}

    def set_expressions(self, node: AnyNode | str) -> dict[str, Expression]:
        """A ``set`` node's compiled expressions by state key (empty for other nodes)."""
        n = self._resolve(node)
        if not isinstance(n, SetNode):
            return {}
        return {key: compile_expression(src) for key, src in n.values.items()}

    def _resolve(self, node: AnyNode | str) -> AnyNode:
        return self.node(node) if isinstance(node, str) else node


def _deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
