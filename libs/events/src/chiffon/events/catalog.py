"""The catalog: every event type Chiffon writes, with its payload model.

A new event type is added here; a changed payload gets a new ``schema_version`` and
an upcaster registered below (``@CATALOG.upcaster("run.node.completed", 1)``).
"""

from __future__ import annotations

from chiffon.events.agents import AGENT_EVENTS
from chiffon.events.keys import APIKEY_EVENTS
from chiffon.events.registry import Catalog
from chiffon.events.runs import RUN_EVENTS
from chiffon.events.workflows import WORKFLOW_EVENTS

CATALOG = Catalog([*WORKFLOW_EVENTS, *RUN_EVENTS, *AGENT_EVENTS, *APIKEY_EVENTS])
