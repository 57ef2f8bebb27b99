"""The catalog: every event type Chiffon writes, with its payload model.

A new event type is added here; a changed payload gets a new ``schema_version`` and
an upcaster registered below (``@CATALOG.upcaster("run.node.completed", 1)``).
"""

from __future__ import annotations

from typing import Any

from chiffon.events.agents import AGENT_EVENTS
from chiffon.events.costs import COST_EVENTS
from chiffon.events.keys import APIKEY_EVENTS
from chiffon.events.memory import MEMORY_EVENTS
from chiffon.events.registry import Catalog
from chiffon.events.runs import RUN_EVENTS
from chiffon.events.triggers import TRIGGER_EVENTS
from chiffon.events.workflows import WORKFLOW_EVENTS

CATALOG = Catalog(
    [
        *WORKFLOW_EVENTS,
        *RUN_EVENTS,
        *AGENT_EVENTS,
        *APIKEY_EVENTS,
        *COST_EVENTS,
        *TRIGGER_EVENTS,
        *MEMORY_EVENTS,
    ]
)


@CATALOG.upcaster("run.llm.called", 1)
def _llm_called_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 knew no cached, cache-write or reasoning tokens: none were recorded, so
    none are known (0), and no budget chose its model."""
    return payload


@CATALOG.upcaster("run.llm.called", 2)
def _llm_called_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 2 did not record what a budget held the call by: nothing is known (an
    empty ``budget_holds``), as for a call no budget held."""
    return payload


@CATALOG.upcaster("run.requested", 1)
def _run_requested_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """Version 1 knew no forks: every such run was started from a workflow (no ``fork``)."""
    return payload
