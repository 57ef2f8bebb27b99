"""What a node's runner works out once per workflow version, not once per run."""

from __future__ import annotations

from typing import Any

from chiffon.events.runs import ErrorInfo
from chiffon.executor.nodes.context import NodeFailure
from chiffon.executor.nodes.output_schema import response_format_for
from chiffon.workflow import AnyNode, LlmNode, WorkflowSpec, build_output_model


class NodePlan:
    """Everything about a node that does not change between runs, worked out once per
    workflow version (effective settings, parsed templates, the output model)."""

    def __init__(self, spec: WorkflowSpec, node: AnyNode) -> None:
        self.node = node
        self.workflow = spec.name  # where the node's memory writes are stored
        self.retry = spec.effective_retry(node)
        self.timeout = spec.effective_timeout(node)
        self.on_error = spec.effective_on_error(node)
        self.templates = spec.templates(node)
        self.output_fields = spec.output_fields(node)
        self.set_expressions = spec.set_expressions(node)
        self.models: list[str] = []
        self.response_format: dict[str, Any] | None = None
        self.output_model: Any = None
        self.temperature = spec.effective_temperature(node)
        self.max_tokens = spec.effective_max_tokens(node)
        if isinstance(node, LlmNode):
            self.models = [spec.effective_model(node) or "", *spec.effective_fallbacks(node)]
            self.response_format = response_format_for(node)
            if node.output:
                self.output_model = build_output_model(node.id, node.output)

    def after_final_failure(self, error: ErrorInfo) -> dict[str, Any]:
        """The node failed for good: with ``on_error: continue`` its outputs are None and
        the run goes on; with ``fail`` the run fails."""
        if self.on_error == "continue":
            return dict.fromkeys(self.output_fields)
        raise NodeFailure(error)
