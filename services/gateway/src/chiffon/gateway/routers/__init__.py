"""One router per resource, collected in ``API_ROUTERS``."""

from chiffon.gateway.routers import (
    agents,
    audit,
    budgets,
    costs,
    events,
    keys,
    profiles,
    runs,
    schedules,
    triggers,
    workflows,
)

API_ROUTERS = (
    workflows.router,
    runs.router,
    events.router,
    keys.router,
    agents.router,
    costs.router,
    budgets.router,
    triggers.router,
    schedules.router,
    audit.router,
    profiles.router,
)

__all__ = ["API_ROUTERS"]
