"""One limit per user-written name: the edge, the events and the tables agree.

A value the edge accepts must fit every event field and column it reaches, or one
legal request could stop a projection for every user.
"""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import ValidationError
from sqlalchemy import Column, String

from chiffon.commands import ApproveNode, CancelRun, StartRun
from chiffon.events import Actor, actor_label
from chiffon.events import limits as lim
from chiffon.events.envelope import Actor as EnvelopeActor
from chiffon.events.keys import ApiKeyCreated, ApiKeyRevoked
from chiffon.events.runs import (
    ApprovalDecided,
    ApprovalRequested,
    NodeStarted,
    RunCancelled,
    RunRequested,
)
from chiffon.events.workflows import WorkflowVersionRegistered
from chiffon.gateway import readmodel as gateway_tables
from chiffon.gateway.schemas import ApprovalCreate, CancelCreate, KeyCreate, KeyRevoke, RunCreate
from chiffon.readmodels import tables

ACTOR = Actor(kind="user", id="ada")


@pytest.mark.parametrize(
    ("column", "limit"),
    [
        (tables.workflows.c.name, lim.WORKFLOW_NAME_MAX_CHARS),
        (tables.runs.c.workflow, lim.WORKFLOW_NAME_MAX_CHARS),
        (tables.run_approvals.c.workflow, lim.WORKFLOW_NAME_MAX_CHARS),
        (tables.run_nodes.c.node_id, lim.NODE_ID_MAX_CHARS),
        (tables.run_approvals.c.node_id, lim.NODE_ID_MAX_CHARS),
        (tables.run_nodes.c.model, lim.MODEL_NAME_MAX_CHARS),
        (tables.runs.c.idempotency_key, lim.IDEMPOTENCY_KEY_MAX_CHARS),
        (tables.workflows.c.registered_by, lim.ACTOR_LABEL_MAX_CHARS),
        (tables.runs.c.requested_by, lim.ACTOR_LABEL_MAX_CHARS),
        (tables.run_approvals.c.decided_by, lim.ACTOR_LABEL_MAX_CHARS),
        (gateway_tables.api_keys.c.name, lim.KEY_NAME_MAX_CHARS),
        (gateway_tables.api_keys.c.created_by, lim.ACTOR_LABEL_MAX_CHARS),
        (gateway_tables.api_keys.c.revoked_by, lim.ACTOR_LABEL_MAX_CHARS),
        (gateway_tables.api_keys.c.revoke_reason, lim.REASON_MAX_CHARS),
    ],
    ids=lambda v: str(v) if isinstance(v, Column) else "",
)
def test_columns_are_as_wide_as_the_limit_of_what_they_hold(
    column: Column[Any], limit: int
) -> None:
    assert isinstance(column.type, String)
    assert column.type.length == limit


@pytest.mark.parametrize("kind", get_args(EnvelopeActor.model_fields["kind"].annotation))
def test_the_longest_actor_label_fits_its_columns(kind: str) -> None:
    actor = Actor(kind=kind, id="k" * lim.ACTOR_ID_MAX_CHARS)  # type: ignore[arg-type]

    assert len(actor_label(actor)) <= lim.ACTOR_LABEL_MAX_CHARS
    with pytest.raises(ValidationError):
        Actor(kind=kind, id="k" * (lim.ACTOR_ID_MAX_CHARS + 1))  # type: ignore[arg-type]


CASES: dict[str, tuple[Any, int]] = {
    # events
    "run.node.started node_id": (
        lambda v: NodeStarted(node_id=v, node_type="llm", attempt=1),
        lim.NODE_ID_MAX_CHARS,
    ),
    "run.approval.requested node_id": (
        lambda v: ApprovalRequested(node_id=v, message="ok?"),
        lim.NODE_ID_MAX_CHARS,
    ),
    "run.approval.decided comment": (
        lambda v: ApprovalDecided(node_id="a", approved=True, comment=v),
        lim.COMMENT_MAX_CHARS,
    ),
    "run.requested workflow": (
        lambda v: RunRequested(workflow=v, version=1, digest="d"),
        lim.WORKFLOW_NAME_MAX_CHARS,
    ),
    "run.requested idempotency_key": (
        lambda v: RunRequested(workflow="w", version=1, digest="d", idempotency_key=v),
        lim.IDEMPOTENCY_KEY_MAX_CHARS,
    ),
    "run.cancelled reason": (
        lambda v: RunCancelled(reason=v, duration_ms=0),
        lim.REASON_MAX_CHARS,
    ),
    "apikey.created name": (
        lambda v: ApiKeyCreated(name=v, role="viewer", key_hash="0" * 64, prefix="chf_"),
        lim.KEY_NAME_MAX_CHARS,
    ),
    "apikey.revoked reason": (lambda v: ApiKeyRevoked(reason=v), lim.REASON_MAX_CHARS),
    "workflow.version_registered name": (
        lambda v: WorkflowVersionRegistered(
            name=v, version=1, digest="0" * 64, spec={}, source="s"
        ),
        lim.WORKFLOW_NAME_MAX_CHARS,
    ),
    # commands
    "start_run workflow": (
        lambda v: StartRun(actor=ACTOR, workflow=v),
        lim.WORKFLOW_NAME_MAX_CHARS,
    ),
    "start_run idempotency_key": (
        lambda v: StartRun(actor=ACTOR, workflow="w", idempotency_key=v),
        lim.IDEMPOTENCY_KEY_MAX_CHARS,
    ),
    "approve_node node_id": (
        lambda v: ApproveNode(actor=ACTOR, run_id="r", node_id=v, approve=True),
        lim.NODE_ID_MAX_CHARS,
    ),
    "approve_node comment": (
        lambda v: ApproveNode(actor=ACTOR, run_id="r", node_id="a", approve=True, comment=v),
        lim.COMMENT_MAX_CHARS,
    ),
    "cancel_run reason": (
        lambda v: CancelRun(actor=ACTOR, run_id="r", reason=v),
        lim.REASON_MAX_CHARS,
    ),
    # the gateway's request bodies
    "RunCreate workflow": (lambda v: RunCreate(workflow=v), lim.WORKFLOW_NAME_MAX_CHARS),
    "ApprovalCreate comment": (
        lambda v: ApprovalCreate(approve=True, comment=v),
        lim.COMMENT_MAX_CHARS,
    ),
    "CancelCreate reason": (lambda v: CancelCreate(reason=v), lim.REASON_MAX_CHARS),
    "KeyCreate name": (lambda v: KeyCreate(name=v, role="viewer"), lim.KEY_NAME_MAX_CHARS),
    "KeyRevoke reason": (lambda v: KeyRevoke(reason=v), lim.REASON_MAX_CHARS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_model_accepts_the_limit_and_refuses_one_more(case: str) -> None:
    build, limit = CASES[case]

    build("a" * limit)
    with pytest.raises(ValidationError):
        build("a" * (limit + 1))


def test_versions_stop_at_a_postgresql_integer() -> None:
    RunCreate(workflow="w", version=lim.WORKFLOW_VERSION_MAX)
    for build in (
        lambda v: RunCreate(workflow="w", version=v),
        lambda v: StartRun(actor=ACTOR, workflow="w", version=v),
        lambda v: RunRequested(workflow="w", version=v, digest="d"),
    ):
        with pytest.raises(ValidationError):
            build(lim.WORKFLOW_VERSION_MAX + 1)
