"""Read models of workflows and runs: tables, migrations, projections and queries.

The executor runs the projections; the gateway and the CLI call the queries.
"""

from chiffon.readmodels.queries import (
    InvalidCursor,
    get_run,
    get_workflow,
    list_pending_approvals,
    list_runs,
    list_workflows,
)
from chiffon.readmodels.tables import MIGRATIONS, metadata
from chiffon.readmodels.views import (
    ApprovalPublic,
    ErrorPublic,
    NodePublic,
    RunPublic,
    RunSummary,
    WorkflowPublic,
    WorkflowSummary,
)

__all__ = [
    "MIGRATIONS",
    "ApprovalPublic",
    "ErrorPublic",
    "InvalidCursor",
    "NodePublic",
    "RunPublic",
    "RunSummary",
    "WorkflowPublic",
    "WorkflowSummary",
    "get_run",
    "get_workflow",
    "list_pending_approvals",
    "list_runs",
    "list_workflows",
    "metadata",
]
