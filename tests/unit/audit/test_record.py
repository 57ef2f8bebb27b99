"""A run's audit record, folded from its events alone."""

from __future__ import annotations

import json
from decimal import Decimal

from chiffon.audit.record import COMMON_KEYS, audit_record, prices_from_cost_events, summary

from .sample import DIGEST, priced, run_events


def test_the_record_answers_who_what_which_version_and_what_it_cost() -> None:
    events = run_events("run-1", comment="looks safe")
    prices = prices_from_cost_events(
        [priced("run-1", events, [Decimal("0.000123"), Decimal(0)])], "run-1"
    )
    record = audit_record("run-1", events, prices)

    assert set(record) == {"run_id", "timeline"}
    assert record["run_id"] == "run-1"
    timeline = record["timeline"]
    assert [e["type"] for e in timeline] == [e.type for e in events]
    assert all(list(entry)[: len(COMMON_KEYS)] == list(COMMON_KEYS) for entry in timeline)

    requested = timeline[0]
    assert requested["actor"] == "api_key:key-7f3a"
    assert requested["key_id"] == "key-7f3a"
    assert requested["trigger"] == {"kind": "api", "id": None}
    assert (requested["workflow"], requested["version"], requested["digest"]) == (
        "deploy-kuma",
        3,
        DIGEST,
    )

    calls = [e for e in timeline if e["type"] == "run.llm.called"]
    assert [(c["node_id"], c["model"], c["tokens"], c["cost_usd"]) for c in calls] == [
        ("plan", "openai/gpt-4o-mini", 200, "0.000123"),
        ("note", "ollama_chat/llama3.1", 50, "0"),
    ]
    decided = next(e for e in timeline if e["type"] == "run.approval.decided")
    assert (decided["actor"], decided["approved"], decided["comment"]) == (
        "user:alice",
        True,
        "looks safe",
    )
    assigned = next(e for e in timeline if e["type"] == "run.agent_task.assigned")
    assert (assigned["node_id"], assigned["agent_id"], assigned["tool"]) == (
        "apply",
        "agent-homelab-1",
        "shell",
    )
    attempts = [(e["node_id"], e["attempt"]) for e in timeline if e["type"] == "run.node.started"]
    assert attempts == [("plan", 1), ("apply", 1), ("note", 1)]

    head = summary(record)
    assert (head["ended"], head["model_calls"], head["tokens"], head["cost_usd"]) == (
        "run.completed",
        2,
        250,
        "0.000123",
    )
    json.dumps(record)  # the record is plain JSON


def test_a_call_not_priced_yet_or_of_unknown_price_has_no_cost() -> None:
    events = run_events("run-2")
    unknown = prices_from_cost_events([priced("run-2", events, [None, Decimal("0.5")])], "run-2")
    record = audit_record("run-2", events, unknown)
    assert [e["cost_usd"] for e in record["timeline"] if e["model"]] == [None, "0.5"]
    assert summary(record)["unpriced_calls"] == 1
    assert [e["cost_usd"] for e in audit_record("run-2", events)["timeline"] if e["model"]] == [
        None,
        None,
    ]


def test_other_runs_events_and_prices_are_left_out() -> None:
    mine, theirs = run_events("run-3"), run_events("run-4")
    prices = prices_from_cost_events([priced("run-4", theirs, [Decimal(1), Decimal(2)])], "run-3")
    assert prices == {}
    record = audit_record("run-3", mine + theirs)
    assert len(record["timeline"]) == len(mine)


def test_a_failure_shows_its_error_and_the_agent() -> None:
    record = audit_record("run-5", run_events("run-5", fail_with="exit_nonzero"))
    last = record["timeline"][-1]
    assert last["type"] == "run.failed"
    assert last["error"] == {
        "type": "exit_nonzero",
        "message": "exit_nonzero on agent-homelab-1",
        "node_id": "apply",
    }
    finished = next(e for e in record["timeline"] if e["type"] == "run.agent_task.finished")
    assert (finished["ok"], finished["agent_id"]) == (False, "agent-homelab-1")


def test_the_same_events_give_the_same_record() -> None:
    events = run_events("run-6")
    assert audit_record("run-6", events) == audit_record("run-6", list(events))
