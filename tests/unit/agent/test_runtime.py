"""The agent runtime in process, with real child processes: caps, limits, never twice."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from google.protobuf import json_format, struct_pb2

from chiffon.agent.application import AgentIdentity, AgentRuntime
from chiffon.agent.settings import DEFAULT_ALLOW
from chiffon.agent.tasks import AtCapacity, RunningTask
from chiffon.agentproto.v1 import agent_pb2

MIB = 1 << 20


def _runtime(tmp_path: Path, **overrides: Any) -> AgentRuntime:
    options: dict[str, Any] = {
        "allow": (*DEFAULT_ALLOW, "head", "yes"),
        "scratch_root": tmp_path / "scratch",
        "output_cap": 1024,
        "max_concurrency": 2,
        "default_timeout": 30.0,
        "max_timeout": 60.0,
        "recent_results": 2,
    }
    options.update(overrides)
    identity = AgentIdentity("a-1", "a", "127.0.0.1", ("shell",), {})
    return AgentRuntime(identity, **options)


def _request(task_id: str, command: Any, **arguments: Any) -> agent_pb2.ExecuteRequest:
    args = struct_pb2.Struct()
    args.update({"command": command, **arguments})
    return agent_pb2.ExecuteRequest(task_id=task_id, tool="shell", arguments=args)


async def _result(runtime: AgentRuntime, request: agent_pb2.ExecuteRequest) -> agent_pb2.TaskResult:
    task = runtime.execute(request)
    if isinstance(task, agent_pb2.TaskResult):
        return task
    updates = [update async for update in task.follow()]
    return updates[-1].result


async def test_output_beyond_the_cap_is_drained_and_counted(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    try:
        result = await _result(runtime, _request("t1", ["head", "-c", "100000", "/dev/zero"]))
    finally:
        await runtime.close()
    stdout = json_format.MessageToDict(result.output)["stdout"]
    assert result.ok
    assert stdout.endswith("[output truncated: 98976 more bytes not kept]")


async def test_a_relative_cwd_cannot_leave_the_scratch_directory(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    try:
        result = await _result(runtime, _request("t1", "true", cwd="../.."))
    finally:
        await runtime.close()
    assert result.error_type == "invalid_arguments"


async def test_more_tasks_than_max_concurrency_are_refused(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    try:
        first = runtime.execute(_request("t1", "sleep 5"))
        second = runtime.execute(_request("t2", "sleep 5"))
        assert isinstance(first, RunningTask) and isinstance(second, RunningTask)
        with pytest.raises(AtCapacity):
            runtime.execute(_request("t3", "sleep 5"))
        # The same task again is not a new one: it attaches.
        assert runtime.execute(_request("t1", "sleep 5")) is first
    finally:
        await runtime.close()
    assert first.result is not None and first.result.error_type == "cancelled"


async def test_a_cancel_before_the_execute_keeps_it_from_starting(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    try:
        assert runtime.cancel("t1", "run cancelled") is False
        result = await _result(runtime, _request("t1", "echo never"))
    finally:
        await runtime.close()
    assert result.error_type == "cancelled" and "run cancelled" in result.error_message


async def test_recent_results_are_bounded(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    try:
        for task_id in ("t1", "t2", "t3"):
            await _result(runtime, _request(task_id, "true"))
        assert runtime.tasks.recent_result("t1") is None
        assert runtime.tasks.recent_result("t3") is not None
    finally:
        await runtime.close()


async def test_an_unknown_tool_is_refused(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    try:
        request = agent_pb2.ExecuteRequest(task_id="t1", tool="python")
        result = await _result(runtime, request)
    finally:
        await runtime.close()
    assert result.error_type == "unknown_tool"


async def test_the_peak_memory_of_a_task_is_its_own_not_the_agents(tmp_path: Path) -> None:
    # wait4's ru_maxrss of a child spawned by the agent holds the agent's own image (~90 MiB
    # for `true` before); the task's figure must not.
    agent_rss = psutil.Process().memory_info().rss
    assert agent_rss > 40 * MIB, "the test needs an agent far larger than `true`"
    runtime = _runtime(tmp_path)
    try:
        result = await _result(runtime, _request("t1", "true"))
    finally:
        await runtime.close()
    assert result.ok
    assert 0 <= result.peak_memory_bytes < 20 * MIB


@pytest.mark.parametrize("larger_than_the_agent", [False, True])
async def test_a_task_that_allocates_reports_what_it_allocated(
    tmp_path: Path, larger_than_the_agent: bool
) -> None:
    # Below the agent's own peak the figure comes from /proc (wait4's is the agent's),
    # above it from wait4.
    agent_rss = psutil.Process().memory_info().rss
    size = agent_rss + 32 * MIB if larger_than_the_agent else 16 * MIB
    assert larger_than_the_agent or size + 16 * MIB < agent_rss
    program = f"b = bytearray({size}); import time; time.sleep(0.5)"
    runtime = _runtime(tmp_path, allow=(sys.executable,))
    try:
        result = await _result(runtime, _request("t1", [sys.executable, "-S", "-c", program]))
    finally:
        await runtime.close()
    assert result.ok, result.error_message
    assert size <= result.peak_memory_bytes < size + 24 * MIB


async def test_each_task_starts_in_an_empty_scratch_directory_removed_after_use(
    tmp_path: Path,
) -> None:
    runtime = _runtime(tmp_path, allow=("touch", "ls", "mkdir", "true"))
    try:
        wrote = await _result(runtime, _request("t1", "touch left-behind"))
        listed = await _result(runtime, _request("t2", "ls -A"))
        made = await _result(runtime, _request("t3", "mkdir sub"))
        listed_again = await _result(runtime, _request("t4", "ls -A"))
    finally:
        await runtime.close()
    assert wrote.ok and made.ok
    assert json_format.MessageToDict(listed.output)["stdout"] == ""
    assert json_format.MessageToDict(listed_again.output)["stdout"] == ""
    assert list((tmp_path / "scratch").iterdir()) == []
