"""Every size a user can write, once.

Each name or text a user writes (in a workflow file, a request body, a header, a CLI
option) has exactly one limit, defined here and imported by every place that checks or
stores it: the workflow spec, the gateway's request models, the command and event
models, and the read-model tables. A value that passes the edge therefore always fits
the column it ends up in, so no legal input can stop a projection (a 120-character node
id once made ``run.node.started`` unstorable in ``run_nodes.node_id VARCHAR(100)`` and
halted the runs read model for every user).

Lengths ending in ``_CHARS`` count characters (what pydantic's ``max_length`` and
PostgreSQL's ``VARCHAR(n)`` count); ``_BYTES`` count UTF-8 bytes.
"""

from __future__ import annotations

from typing import Final

# -- names in a workflow file ------------------------------------------------------------

WORKFLOW_NAME_MAX_CHARS: Final = 63
"""A workflow's ``name``: a slug (it is also the workflow aggregate's id and a URL part)."""

NODE_ID_MAX_CHARS: Final = 100
"""``nodes[].id``: stored in ``run_nodes.node_id`` and ``run_approvals.node_id``."""

VARIABLE_NAME_MAX_CHARS: Final = NODE_ID_MAX_CHARS
"""Input names, output fields, ``set`` targets and ``outputs``: state keys. The same limit
as node ids, because a node without ``output`` writes its result under its own id."""

MODEL_NAME_MAX_CHARS: Final = 200
"""``model`` and ``fallbacks`` (``provider/model``): stored in ``run_nodes.model``."""

CAPABILITY_MAX_CHARS: Final = 63
"""An agent node's ``requires`` entries (``shell``, ``gpu``...)."""

WORKFLOW_VERSION_MAX: Final = 2_147_483_647
"""A workflow's ``version``: a PostgreSQL ``integer`` in the read models."""

SPEC_STRING_MAX_BYTES: Final = 64 * 1024
"""Any one string in a workflow file (a prompt, a description)."""

WORKFLOW_MAX_BYTES: Final = 900 * 1024
"""A workflow version as it travels: the source as written plus its canonical spec, the
two texts ``workflow.version_registered`` carries. NATS refuses a message over its
``max_payload`` (1 MiB by default); 900 KiB leaves room for the envelope and headers. A
file over this size is refused before it is even parsed."""

WORKFLOW_NAME_PATTERN: Final = rf"^[a-z0-9][a-z0-9_-]{{0,{WORKFLOW_NAME_MAX_CHARS - 1}}}$"
"""A workflow name: lowercase letters, digits, ``-`` and ``_``, starting with a letter or digit."""

NODE_ID_PATTERN: Final = rf"^[A-Za-z_][A-Za-z0-9_]{{0,{NODE_ID_MAX_CHARS - 1}}}$"
"""A node id: an identifier (letters, digits, ``_``; not starting with a digit)."""

# -- what a request carries ------------------------------------------------------------

IDEMPOTENCY_KEY_MAX_CHARS: Final = 200
"""The ``Idempotency-Key`` header; stored in ``runs.idempotency_key``."""

COMMENT_MAX_CHARS: Final = 4000
"""An approval decision's comment."""

REASON_MAX_CHARS: Final = 1000
"""Why a run was cancelled, paused or resumed, or why an API key was revoked."""

KEY_NAME_MAX_CHARS: Final = 100
"""An API key's name; stored in ``gateway_api_keys.name``."""

COMMAND_MAX_BYTES: Final = 1_000_000
"""A command as encoded for NATS request-reply: under ``max_payload`` (1 MiB by default)
with room for the headers."""

# -- who did it ------------------------------------------------------------------------

ACTOR_ID_MAX_CHARS: Final = 200
"""An actor's id (an API key id, a user name, a service replica)."""

ACTOR_NAME_MAX_CHARS: Final = 200

ACTOR_LABEL_MAX_CHARS: Final = len("service:") + ACTOR_ID_MAX_CHARS
"""``<kind>:<id>``, as the read models store who requested, approved or registered
(``service`` and ``api_key`` are the longest kinds, 7 characters)."""
