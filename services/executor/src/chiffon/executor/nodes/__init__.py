"""Node runners (llm, set, approval, agent) and the one retry policy that owns retries."""

from chiffon.executor.nodes.context import (
    CapacityPause,
    Execution,
    NodeError,
    NodeFailure,
    RunCancelledSignal,
    error_info,
)
from chiffon.executor.nodes.output_schema import parse_output, response_format_for
from chiffon.executor.nodes.plan import NodePlan
from chiffon.executor.nodes.runner import execute_node

__all__ = [
    "Execution",
    "NodeError",
    "NodeFailure",
    "NodePlan",
    "CapacityPause",
    "RunCancelledSignal",
    "error_info",
    "execute_node",
    "parse_output",
    "response_format_for",
]
