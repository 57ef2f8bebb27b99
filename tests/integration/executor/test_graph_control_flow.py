"""Each control-flow construct, executed over the real event store and the real model
gateway, against the scripted OpenAI-compatible test server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from chiffon.commands import ApproveNode
from chiffon.events import new_event
from chiffon.executor.domain import RunState, decide_approval
from chiffon.executor.models.offline import echo_value

from .graph_support import (  # noqa: F401 — provider: the autouse test server
    LOOP,
    TESTER,
    RunLog,
    ScriptedLlm,
    claim,
    completed,
    execution,
    last,
    provider,
    run,
    start,
    types,
)
from .openai_server import ScriptedFailure

LINEAR = """
name: linear
version: 1
inputs: {topic: {type: string}}
defaults: {model: chiffon/echo}
nodes:
  - {id: research, type: llm, prompt: "facts about {topic}", output: {facts: "list[string]"}}
  - {id: write, type: llm, prompt: "write about {topic} using {facts}"}
  - {id: count, type: set, values: {n: "len_ok == None", len_ok: "1 + 1"}}
edges:
  - {from: research, to: write}
  - {from: write, to: count}
"""


async def test_linear_records_every_step_and_completes(log: RunLog) -> None:
    outcome, _, llm = await run(log, LINEAR, {"topic": "owls"})
    assert outcome == "succeeded"
    assert (await types(log)) == [
        "run.requested",
        "run.claimed",
        "run.node.started",
        "run.llm.called",
        "run.node.completed",
        "run.node.started",
        "run.llm.called",
        "run.node.completed",
        "run.node.started",
        "run.node.completed",
        "run.completed",
    ]
    nodes = dict(await completed(log))
    assert nodes["research"]["facts"][0] == "facts[0]: facts about owls"
    assert nodes["write"]["write"].startswith("echo: write about owls using [")
    assert nodes["count"] == {"n": True, "len_ok": 2}  # set reads the state as the node started
    outputs = (await last(log, "run.completed")).outputs
    assert outputs["topic"] == "owls" and outputs["len_ok"] == 2
    assert [m for m, _ in llm.calls] == ["chiffon/echo", "chiffon/echo"]


BRANCH = """
name: branch
version: 1
defaults: {model: openai/x}
nodes:
  - {id: review, type: llm, prompt: "score it", output: {score: integer}}
  - {id: good, type: set, values: {verdict: "'good'"}}
  - {id: bad, type: set, values: {verdict: "'bad'"}}
edges:
  - {from: review, to: good, when: "score >= 7"}
  - {from: review, to: bad, when: "score < 7"}
"""


async def test_condition_on_structured_output_picks_the_branch(log: RunLog) -> None:
    for score, expected in ((9, "good"), (3, "bad")):
        llm = ScriptedLlm(lambda *_a, s=score: json.dumps({"score": s}))
        outcome, _, _ = await run(log, BRANCH, llm=llm)
        assert outcome == "succeeded"
        assert [n for n, _ in (await completed(log))] == ["review", expected]
        assert (await last(log, "run.completed")).outputs["verdict"] == expected


async def test_loop_stops_at_max_iterations(log: RunLog) -> None:
    llm = ScriptedLlm(
        lambda _m, msgs, schema: (
            json.dumps({"score": 1}) if "score" in schema["properties"] else None
        )
    )
    outcome, _, _ = await run(log, LOOP, llm=llm)
    assert outcome == "succeeded"
    ran = [n for n, _ in (await completed(log))]
    assert ran == ["begin"] + ["write", "review"] * 4  # the first pass and 3 iterations
    iterations = [
        e.payload.iteration
        for e in (await log.of())
        if e.type == "run.node.completed" and e.payload.node_id == "write"
    ]
    assert iterations == [1, 2, 3, 4]


async def test_loop_exits_when_condition_turns_false(log: RunLog) -> None:
    scores = iter([2, 5, 8])
    llm = ScriptedLlm(
        lambda _m, _msgs, schema: (
            json.dumps({"score": next(scores)}) if "score" in schema["properties"] else None
        )
    )
    outcome, _, _ = await run(log, LOOP, llm=llm)
    assert outcome == "succeeded"
    assert [n for n, _ in (await completed(log))] == ["begin"] + ["write", "review"] * 3
    assert (await last(log, "run.completed")).outputs["score"] == 8


FANOUT = """
name: fanout
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: plan, type: set, values: {topic: "'tides'"}}
  - {id: left, type: llm, prompt: "left on {topic}", output: {l: string}}
  - {id: right, type: llm, prompt: "right on {topic}", output: {r: string}}
  - {id: merge, type: llm, prompt: "merge {l} and {r}"}
edges:
  - {from: plan, to: left}
  - {from: plan, to: right}
  - {from: [left, right], to: merge}
"""


async def test_fan_out_runs_branches_and_the_join_sees_both(log: RunLog) -> None:
    outcome, _, llm = await run(log, FANOUT)
    assert outcome == "succeeded"
    ran = [n for n, _ in (await completed(log))]
    assert ran[0] == "plan" and set(ran[1:3]) == {"left", "right"} and ran[3] == "merge"
    merge_prompt = next(p for _m, p in llm.calls if p.startswith("merge"))
    assert "l: left on tides" in merge_prompt and "r: right on tides" in merge_prompt
    assert ran.count("merge") == 1


APPROVAL = """
name: gate
version: 1
defaults: {model: chiffon/echo}
nodes:
  - {id: draft, type: llm, prompt: "draft", output: {text: string}}
  - {id: approve, type: approval, message: "Publish {text}?"}
  - {id: publish, type: set, values: {done: "approved"}}
edges:
  - {from: draft, to: approve}
  - {from: approve, to: publish}
"""


async def decide(log: RunLog, node: str, approved: bool, comment: str | None = None) -> None:
    events, version = await log.store.read_aggregate(log.key)
    state = RunState.from_events(log.run_id, [(e.envelope, e.sequence) for e in events])
    command = ApproveNode(
        actor=TESTER, run_id=log.run_id, node_id=node, approve=approved, comment=comment
    )
    decision = decide_approval(state, command, datetime.now(UTC))
    await log.store.append(
        log.key,
        [new_event(decision, aggregate_id=log.run_id, actor=TESTER)],
        version,
    )


async def test_approval_suspends_then_resumes_on_the_decision(log: RunLog) -> None:
    llm = ScriptedLlm()
    workflow, _ = await start(log, APPROVAL)
    outcome = await execution(log, workflow, await claim(log), llm).execute()
    assert outcome == "suspended"
    assert (await types(log))[-3:] == [
        "run.node.started",
        "run.approval.requested",
        "run.suspended",
    ]
    assert (await last(log, "run.approval.requested")).message.startswith("Publish text: draft")
    await decide(log, "approve", True, "ship it")
    state = await claim(log, executor="executor-2")
    assert state.status == "running"
    outcome = await execution(log, workflow, state, llm).execute()
    assert outcome == "succeeded"
    assert [n for n, _ in (await completed(log))] == ["draft", "approve", "publish"]
    assert len(llm.calls) == 1  # the draft was not written twice
    assert (await last(log, "run.completed")).outputs["approval_comment"] == "ship it"


async def test_rejection_fails_the_run_by_default(log: RunLog) -> None:
    llm = ScriptedLlm()
    workflow, _ = await start(log, APPROVAL)
    assert await execution(log, workflow, await claim(log), llm).execute() == "suspended"
    await decide(log, "approve", False, "not good")
    outcome = await execution(log, workflow, await claim(log), llm).execute()
    assert outcome == "failed"
    error = (await last(log, "run.failed")).error
    assert error.type == "rejected" and "not good" in error.message and error.node_id == "approve"


async def test_rejection_takes_on_reject(log: RunLog) -> None:
    source = APPROVAL.replace(
        'message: "Publish {text}?"', 'message: "Publish {text}?", on_reject: redo'
    ).replace(
        "  - {id: publish",
        "  - {id: redo, type: set, values: {done: \"'redo'\"}}\n  - {id: publish",
    )
    llm = ScriptedLlm()
    workflow, _ = await start(log, source)
    assert await execution(log, workflow, await claim(log), llm).execute() == "suspended"
    await decide(log, "approve", False)
    assert await execution(log, workflow, await claim(log), llm).execute() == "succeeded"
    assert [n for n, _ in (await completed(log))] == ["draft", "approve", "redo"]


RETRY = """
name: retry
version: 1
defaults: {model: openai/main, retry: {attempts: 3, backoff: {initial: 10ms}}}
nodes:
  - {id: ask, type: llm, prompt: "q", output: {answer: string}}
"""


async def test_retries_then_succeeds(log: RunLog) -> None:
    replies = iter(["boom", "not json", None])

    def script(*_a: object) -> str | None:
        reply = next(replies)
        if reply == "boom":
            raise ScriptedFailure("HTTP 503")
        return reply

    outcome, _, _ = await run(log, RETRY, llm=ScriptedLlm(script))
    assert outcome == "succeeded"
    failures = [e.payload for e in (await log.of()) if e.type == "run.node.failed"]
    assert [(f.attempt, f.error.type, f.will_retry) for f in failures] == [
        (1, "provider_error", True),
        (2, "invalid_output", True),
    ]
    assert failures[0].retry_in_ms == 10 and failures[1].retry_in_ms == 20
    assert (await last(log, "run.node.completed")).attempt == 3
    calls = [e.payload for e in (await log.of()) if e.type == "run.llm.called"]
    assert [c.ok for c in calls] == [False, True, True]


async def test_attempts_spent_fail_the_run_or_continue(log: RunLog) -> None:
    llm = ScriptedLlm(lambda *_a: "{}")
    outcome, _, _ = await run(log, RETRY, llm=llm)
    assert outcome == "failed"
    error = (await last(log, "run.failed")).error
    assert error.type == "invalid_output" and error.node_id == "ask" and "answer" in error.message
    assert len(llm.calls) == 3

    continuing = RETRY.replace('prompt: "q",', 'prompt: "q", on_error: continue,')
    outcome, _, _ = await run(log, continuing, llm=ScriptedLlm(lambda *_a: "{}"))
    assert outcome == "succeeded"
    assert (await last(log, "run.completed")).outputs == {"answer": None}


async def test_fallbacks_are_tried_in_order(log: RunLog) -> None:
    source = RETRY.replace(
        "retry: {attempts: 3, backoff: {initial: 10ms}}", "fallbacks: [openai/b, openai/c]"
    )

    def script(model: str, *_a: object) -> str | None:
        if model != "openai/c":
            raise ScriptedFailure(f"{model} is down")
        return None

    outcome, _, _ = await run(log, source, llm=ScriptedLlm(script))
    assert outcome == "succeeded"
    calls = [e.payload for e in (await log.of()) if e.type == "run.llm.called"]
    assert [(c.model, c.ok, c.fallback_index) for c in calls] == [
        ("openai/main", False, 0),
        ("openai/b", False, 1),
        ("openai/c", True, 2),
    ]


async def test_timeout_fails_the_attempt(log: RunLog) -> None:
    import asyncio

    source = RETRY.replace("retry: {attempts: 3, backoff: {initial: 10ms}}", "timeout: 50ms")
    slow = ScriptedLlm(lambda *_a: asyncio.sleep(5))  # the provider never answers in time
    outcome, _, _ = await run(log, source, llm=slow)
    assert outcome == "failed"
    assert (await last(log, "run.failed")).error.type == "timeout"


AGENT = """
name: deploy
version: 1
nodes:
  - {id: publish, type: agent, requires: [shell], task: {tool: shell, command: "echo {who}"}, retry: {attempts: 2, backoff: {initial: 1ms}}}
  - {id: after, type: set, values: {ok: "publish == None"}}
inputs: {who: {type: string, default: me}}
edges:
  - {from: publish, to: after}
"""


async def test_agent_node_fails_clearly_until_agents_exist(log: RunLog) -> None:
    outcome, _, _ = await run(log, AGENT)
    assert outcome == "failed"
    error = (await last(log, "run.failed")).error
    assert (
        error.type == "no_agent" and error.message == "no agent available for capabilities [shell]"
    )
    assert [e.payload.will_retry for e in (await log.of()) if e.type == "run.node.failed"] == [
        True,
        False,
    ]

    outcome, _, _ = await run(log, AGENT.replace("task:", "on_error: continue, task:"))
    assert outcome == "succeeded"
    assert (await last(log, "run.completed")).outputs["ok"] is True


async def test_a_condition_that_cannot_be_evaluated_fails_the_run(log: RunLog) -> None:
    source = BRANCH.replace('"score >= 7"', "\"score >= '7'\"")
    outcome, _, _ = await run(log, source, llm=ScriptedLlm(lambda *_a: json.dumps({"score": 9})))
    assert outcome == "failed"
    error = (await last(log, "run.failed")).error
    assert error.type == "condition_error" and error.message.startswith("edges[0].when")


def test_echo_integers_are_predictable() -> None:
    value = echo_value("score", {"type": "integer"}, "score draft 1")
    assert 1 <= value <= 10
    assert value == echo_value("score", {"type": "integer"}, "score draft 1")
