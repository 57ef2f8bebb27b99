"""One router per resource, collected in ``API_ROUTERS``."""

from chiffon.gateway.routers import events, keys, runs, workflows

API_ROUTERS = (workflows.router, runs.router, events.router, keys.router)

__all__ = ["API_ROUTERS"]
