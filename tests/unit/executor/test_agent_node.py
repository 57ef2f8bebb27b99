"""The agent node's pieces that need no agent: the request, the outputs, the failures."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from chiffon.agentproto.v1 import agent_pb2
from chiffon.executor.agents.client import TaskOutcome
from chiffon.executor.nodes.agent import (
    build_request,
    failure,
    node_outputs,
    recorded_arguments,
    requirement,
    result_fields,
)
from chiffon.executor.nodes.context import NodeError
from chiffon.workflow import AgentNode


def node(**kw: Any) -> AgentNode:
    fields: dict[str, Any] = {
        "id": "deploy",
        "type": "agent",
        "requires": ["shell"],
        "task": {"tool": "shell", "command": "echo hi"},
    }
    fields.update(kw)
    return AgentNode.model_validate(fields)


def outcome(
    output: dict[str, Any] | None = None,
    lines: list[tuple[str, str]] | None = None,
    **result: Any,
) -> TaskOutcome:
    task_result = agent_pb2.TaskResult(**result)
    if output is not None:
        task_result.output.update(output)
    return TaskOutcome(task_result, lines or [], wall_ms=5.0)


def test_the_requirement_holds_capabilities_labels_and_resources() -> None:
    need = requirement(node(labels={"zone": "lab"}, resources={"gpu_vram_gb": 8, "cpu_cores": 2}))
    assert (need.capabilities, dict(need.labels), need.gpu_vram_gb, need.cpu_cores) == (
        ("shell",),
        {"zone": "lab"},
        8.0,
        2.0,
    )
    assert need.describe() == (
        "capabilities [shell], labels zone=lab, a GPU with 8 GiB VRAM, 2 CPU cores"
    )


def test_the_request_names_the_attempt_and_carries_the_arguments() -> None:
    task = {"tool": "shell", "command": ["echo", "a; rm -rf /"], "cwd": "work"}
    request = build_request("r1", node(), task, 2, 3, 60.0)
    assert (request.task_id, request.run_id, request.node_id) == ("r1:deploy:2:3", "r1", "deploy")
    assert (request.attempt, request.tool, request.timeout_seconds) == (3, "shell", 60.0)
    assert json_format.MessageToDict(request.arguments) == {
        "command": ["echo", "a; rm -rf /"],
        "cwd": "work",
    }


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"command": "echo"}, "deploy.task: no tool named"),
        ({"tool": "", "command": "echo"}, "deploy.task: no tool named"),
    ],
)
def test_a_task_without_a_tool_is_refused(task: dict[str, Any], message: str) -> None:
    with pytest.raises(NodeError) as refused:
        build_request("r1", node(), task, 1, 1)
    assert (refused.value.kind, str(refused.value), refused.value.retryable) == (
        "invalid_task",
        message,
        False,
    )


def test_outputs_are_the_result_under_the_node_id_or_the_picked_fields() -> None:
    done = outcome({"stdout": "hi\n", "stderr": "", "exit_code": 0}, ok=True)
    fields = result_fields(done)
    assert fields == {"stdout": "hi\n", "stderr": "", "exit_code": 0}
    assert isinstance(fields["exit_code"], int)
    assert node_outputs(node(), fields) == {"deploy": fields}
    picked = node(output={"stdout": "string", "exit_code": "integer"})
    assert node_outputs(picked, fields) == {"stdout": "hi\n", "exit_code": 0}
    with pytest.raises(NodeError) as wrong:
        node_outputs(node(output={"missing": "string"}), fields)
    assert wrong.value.kind == "invalid_output" and not wrong.value.retryable


def test_without_output_in_the_result_the_lines_make_it() -> None:
    lines = [("stdout", "one"), ("stderr", "warn\n"), ("stdout", "two\n")]
    fields = result_fields(outcome(None, lines, ok=True, exit_code=0))
    assert fields == {"stdout": "one\ntwo\n", "stderr": "warn\n", "exit_code": 0}


def test_a_tools_own_fields_are_taken_as_answered_without_its_streamed_lines() -> None:
    lines = [("stdout", "TASK [write the compose file] ***")] * 1000
    play = {"status": "successful", "rc": 0, "stdout_tail": "PLAY RECAP ..."}
    fields = result_fields(outcome(play, lines, ok=True, exit_code=0))
    assert fields == {**play, "exit_code": 0}


def test_failures_are_retried_unless_no_attempt_can_cure_them() -> None:
    failed = outcome(
        {"stdout": "", "stderr": "disk full\n", "exit_code": 2},
        ok=False,
        exit_code=2,
        error_type="nonzero_exit",
        error_message="exited with 2",
    )
    error = failure(failed, result_fields(failed))
    assert (error.kind, str(error), error.retryable) == (
        "command_failed",
        "the command exited with 2: disk full",
        True,
    )
    refused = outcome(
        None,
        ok=False,
        exit_code=-1,
        error_type="not_allowed",
        error_message="command 'rm' is not allowed on this agent",
    )
    error = failure(refused, result_fields(refused))
    assert (error.kind, error.retryable) == ("not_allowed", False)
    assert str(error) == "command 'rm' is not allowed on this agent"
    # A task killed after its time, refused by a fence or over a limit would be again.
    for kind in ("timeout", "forbidden", "limit_exceeded"):
        ended = outcome(None, ok=False, exit_code=-9, error_type=kind, error_message="killed")
        error = failure(ended, result_fields(ended))
        assert (error.kind, error.retryable) == (kind, False)


def test_recorded_arguments_mask_secrets_at_any_depth_and_cut_long_texts() -> None:
    recorded = recorded_arguments(
        {
            "method": "POST",
            "headers": {"Authorization": "Bearer abc", "Accept": "json"},
            "env": {"DB_PASSWORD": "hunter2", "MODE": "fast"},
            "extra_vars": {"api_key": "sk-1", "items": [{"token": "t"}, "x"]},
            "code": "x" * 10_000,
        }
    )
    assert recorded["headers"] == {"Authorization": "***", "Accept": "json"}
    assert recorded["env"] == {"DB_PASSWORD": "***", "MODE": "fast"}
    assert recorded["extra_vars"] == {"api_key": "***", "items": [{"token": "***"}, "x"]}
    assert recorded["method"] == "POST"
    assert len(recorded["code"]) == 4001 and recorded["code"].endswith("…")


def test_whole_numbers_come_back_as_ints() -> None:
    counts = {"hosts": {"localhost": {"ok": 4, "changed": 3}}, "ratio": 0.5, "big": 2.0**60}
    fields = result_fields(outcome(counts, ok=True, exit_code=0))
    assert fields["hosts"] == {"localhost": {"ok": 4, "changed": 3}}
    assert isinstance(fields["hosts"]["localhost"]["ok"], int)
    assert fields["ratio"] == 0.5 and isinstance(fields["big"], float)
