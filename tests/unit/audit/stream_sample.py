"""Events of the streams other than RUNS that an auditor asks about (and some that the
index leaves out), each carrying the secrets its type carries, so tests can check that
none of them reaches the index."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from chiffon.events import Actor, Envelope, new_event
from chiffon.events.agents import (
    AgentCameBack,
    AgentCredentialIssued,
    AgentDeregistered,
    AgentRegistered,
)
from chiffon.events.costs import BudgetReserved, BudgetSet, Reservation
from chiffon.events.envelope import EventPayload
from chiffon.events.keys import ApiKeyCreated, ApiKeyRevoked
from chiffon.events.triggers import ScheduleCreated, TriggerCreated, TriggerSecretsSet
from chiffon.events.workflows import WorkflowVersionRegistered
from tests.unit.audit.sample import T0

ADMIN = Actor(kind="api_key", id="key-admin", name="root")
REGISTRY = Actor.service("registry", 1)
KEY_HASH = "f0" * 32
CREDENTIAL_HASH = "c1" * 32
TRIGGER_SECRET = "gAAAAAB-trigger-secret-fernet-token"
REPLY_TOKEN = "gAAAAAB-reply-token-fernet-token"
SECRETS = (KEY_HASH, CREDENTIAL_HASH, TRIGGER_SECRET, REPLY_TOKEN, "chf_pre")


def at(payload: EventPayload, aggregate_id: str, actor: Actor, seconds: float) -> Envelope[Any]:
    return new_event(
        payload,
        aggregate_id=aggregate_id,
        actor=actor,
        occurred_at=T0 + timedelta(seconds=seconds),
    )


def key_events() -> list[Envelope[Any]]:
    created = ApiKeyCreated(name="ci\x00bot", role="operator", key_hash=KEY_HASH, prefix="chf_pre")
    return [
        at(created, "key-1", ADMIN, 10),
        at(ApiKeyRevoked(reason="leaked"), "key-1", ADMIN, 40),
    ]


def budget_events() -> list[Envelope[Any]]:
    raised = BudgetSet(scope="workflow", scope_id="triage", period="day", hard_usd=Decimal(5))
    reservation = Reservation(
        id="r:plan:1:0",
        amount_usd=Decimal("0.1"),
        period="2026-12-01",
        expires_at=T0 + timedelta(minutes=5),
        run_id="r",
        node_id="plan",
        model="openai/gpt-4o-mini",
    )
    return [
        at(raised, "workflow_triage", ADMIN, 20),
        # The ledger: one per model call, left out of the index.
        at(BudgetReserved(reservations=[reservation]), "workflow_triage", REGISTRY, 21),
    ]


def agent_events() -> list[Envelope[Any]]:
    registered = AgentRegistered(
        name="homelab",
        host="nas",
        address="10.0.0.2:50051",
        agent_id="homelab.nas",
        metadata="token=very-private",
        credential_id="cred-1",
    )
    issued = AgentCredentialIssued(name="homelab", secret_hash=CREDENTIAL_HASH, prefix="chf_pre")
    return [
        at(issued, "cred-1", ADMIN, 5),
        at(registered, "homelab-nas", REGISTRY, 30),
        at(AgentCameBack(), "homelab-nas", REGISTRY, 31),  # liveness: left out
        at(AgentDeregistered(reason="retired"), "homelab-nas", ADMIN, 50),
    ]


def trigger_events() -> list[Envelope[Any]]:
    created = TriggerCreated(
        name="issues",
        workflow="triage",
        version=3,
        scheme="telegram",
        secrets_encrypted=[TRIGGER_SECRET],
        reply_token_encrypted=REPLY_TOKEN,
    )
    schedule = ScheduleCreated(name="nightly", workflow="backup", cron="0 3 * * *")
    return [
        at(created, "issues", ADMIN, 15),
        at(TriggerSecretsSet(secrets_encrypted=[TRIGGER_SECRET]), "issues", ADMIN, 35),
        at(schedule, "nightly", ADMIN, 45),
    ]


def workflow_events() -> list[Envelope[Any]]:
    registered = WorkflowVersionRegistered(
        name="triage",
        version=3,
        digest="ab" * 32,
        spec={"name": "triage"},
        source="name: triage\n",
    )
    return [at(registered, "triage", ADMIN, 1)]
