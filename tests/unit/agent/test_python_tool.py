"""The python tool in process, with real children: what a snippet gets, and each fence.

The hostile cases a user would send (fork bomb, 4 GiB, endless loop, 10 GiB file) run against
a real agent in tests/integration/agent/test_tool_python.py; here, what they rest on: the
network namespace, the environment, the uid, the scratch directory, and the sweep of a
process that left the task's process group.
"""

from __future__ import annotations

import asyncio
import json
import marshal
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chiffon.agent.settings import AgentSettings
from chiffon.agent.tools.base import ToolContext, ToolRefused, ToolResult
from chiffon.agent.tools.python_tool import PythonTool, answer
from chiffon.agent.tools.sandbox import RUNNER, Fences, RunnerOutcome, UidSlots

AS_ROOT = os.geteuid() == 0


def _settings(**overrides: Any) -> AgentSettings:
    return AgentSettings(
        executor_public_key_file=Path("/dev/null"),
        agent_capabilities="python",
        agent_max_concurrency=2,
        **overrides,
    )


class Runner:
    def __init__(self, tool: PythonTool, scratch_root: Path) -> None:
        self.tool = tool
        self.scratch_root = scratch_root
        self.lines: list[tuple[int, str]] = []

    async def __call__(self, timeout: float = 30.0, **arguments: Any) -> ToolResult:
        ctx = ToolContext(
            task_id="t",
            timeout=timeout,
            cancelled=asyncio.get_running_loop().create_future(),
            on_line=lambda stream, text: self.lines.append((stream, text)),
            scratch_root=self.scratch_root,
        )
        return await self.tool.run(arguments, ctx)


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Runner]:
    tool = PythonTool(_settings(agent_python_cpu_seconds=2))
    yield Runner(tool, tmp_path / "scratch")
    await tool.close()


# Claimed only by the test below (the agents of other tests claim from their own bases).
UID_CLAIM_BASE = 2_200_000_000


def uid_processes(uid: int) -> list[int]:
    """Pids of the processes whose real uid is `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(name))
                        break
        except OSError:
            continue
    return found


async def test_the_result_round_trips_as_json_with_the_inputs(run: Runner) -> None:
    inputs = {"name": "kuma", "ports": [3001, 443], "nested": {"ok": True, "none": None}}
    code = (
        "print('hello from', inputs['name'])\n"
        "import sys; print('warn', file=sys.stderr)\n"
        "result = {'echo': inputs, 'sum': sum(inputs['ports']), 'pi': 3.5, 'text': 'é✓'}\n"
    )
    result = await run(code=code, inputs=inputs)
    assert result.ok, result.error_message
    assert dict(result.output) == {
        "result": {"echo": inputs, "sum": 3444, "pi": 3.5, "text": "é✓"},
        "stdout": "hello from kuma\n",
        "stderr": "warn\n",
    }
    assert (1, "hello from kuma") in run.lines and (2, "warn") in run.lines
    assert result.duration_ms > 0 and result.cpu_seconds > 0
    # The snippet's own peak (its image), not the agent's that rusage would report.
    assert 0 < result.peak_memory_bytes < 64 << 20


async def test_an_exception_is_a_python_error_with_the_snippets_traceback(run: Runner) -> None:
    result = await run(code="def f():\n    return 1 / 0\n\nf()\n")
    assert result.error_type == "python_error"
    assert 'File "<snippet>", line 2, in f' in result.error_message
    assert result.error_message.endswith("ZeroDivisionError: division by zero")
    assert "sandbox_runner" not in result.error_message


async def test_a_result_that_is_not_json_is_an_invalid_result(run: Runner) -> None:
    for code in ("result = {1, 2}", "result = float('nan')", "result = {1: 'a'}"):
        result = await run(code=code)
        assert result.error_type == "invalid_result", code


async def test_the_environment_holds_none_of_the_agents_variables(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHIFFON_SECRET_PROBE", "agent-secret-value")
    code = "import os; result = {k: os.environ[k] for k in sorted(os.environ)}; cwd = os.getcwd()"
    result = await run(code=code + "\nresult['cwd'] = cwd")
    assert result.ok, result.error_message
    seen = result.output["result"]
    assert sorted(seen) == ["HOME", "LANG", "PATH", "TMPDIR", "cwd"]
    assert seen["HOME"] == seen["cwd"] == seen["TMPDIR"]
    assert Path(seen["cwd"]).parent == run.scratch_root
    removed = not os.path.exists(seen["cwd"])  # noqa: ASYNC240
    assert removed, "the scratch directory is removed after the task"


async def test_no_network_unless_asked_and_allowed(tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"pong")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = (
        "import socket\n"
        f"with socket.create_connection(('127.0.0.1', {port}), timeout=5) as s:\n"
        "    result = s.recv(4).decode()\n"
    )
    closed = PythonTool(_settings())
    opened = PythonTool(_settings(agent_python_allow_network=True))
    try:
        fenced = await Runner(closed, tmp_path)(code=code)
        # Its own network namespace: not even the agent's loopback is there.
        assert fenced.error_type == "python_error"
        assert "Network is unreachable" in fenced.error_message
        with pytest.raises(ToolRefused) as refused:
            await Runner(closed, tmp_path)(code=code, network=True)
        assert refused.value.error_type == "forbidden"
        allowed = await Runner(opened, tmp_path)(code=code, network=True)
        assert allowed.ok and allowed.output["result"] == "pong", allowed.error_message
        still_fenced = await Runner(opened, tmp_path)(code=code)
        assert still_fenced.error_type == "python_error"
    finally:
        server.close()
        await closed.close()
        await opened.close()


@pytest.mark.skipif(not AS_ROOT, reason="a uid of the task's own needs a root agent")
async def test_as_root_the_snippet_runs_as_a_uid_of_its_own(run: Runner, tmp_path: Path) -> None:
    private = tmp_path / "agent-only"
    private.write_text("agent credential")
    private.chmod(0o600)
    code = (
        "import os\n"
        "result = {'uid': os.getuid(), 'groups': os.getgroups()}\n"
        f"try:\n    open({str(private)!r}).read()\nexcept PermissionError:\n"
        "    result['denied'] = True\n"
    )
    result = await run(code=code)
    assert result.ok, result.error_message
    seen = result.output["result"]
    assert seen["uid"] >= 2_000_000_000 and seen["groups"] in ([], [seen["uid"]])
    assert seen["denied"] is True


@pytest.mark.skipif(not AS_ROOT, reason="the sweep by uid needs a root agent")
async def test_a_process_that_left_the_group_is_swept_with_the_task(run: Runner) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(600)\n"
        "    os._exit(0)\n"
        "result = os.getuid()\n"
    )
    result = await run(code=code)
    assert result.ok, result.error_message
    assert uid_processes(result.output["result"]) == []


async def test_unknown_or_malformed_arguments_are_invalid(run: Runner) -> None:
    for arguments in (
        {"code": ""},
        {"code": 1},
        {"code": "pass", "inputs": [1]},
        {"code": "pass", "network": "yes"},
        {"code": "pass", "timeout_seconds": 3},
    ):
        with pytest.raises(ToolRefused) as refused:
            await run(**arguments)
        assert refused.value.error_type == "invalid_arguments", arguments


@pytest.mark.skipif(not AS_ROOT, reason="a uid per task needs a root agent")
async def test_a_task_at_its_process_limit_leaves_another_tasks_limit_alone(
    tmp_path: Path,
) -> None:
    tool = PythonTool(_settings(agent_python_processes=4))
    full = asyncio.Event()

    def on_line(_stream: int, text: str) -> None:
        if text == "full":
            full.set()

    hog = (
        "import os, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(600)\n"  # a child holds one of the 4 processes until swept
        "try:\n    os.fork()\nexcept BlockingIOError:\n    print('full', flush=True)\n"
        "time.sleep(600)\n"
    )
    ctx = ToolContext(
        task_id="hog",
        timeout=60.0,
        cancelled=asyncio.get_running_loop().create_future(),
        on_line=on_line,
        scratch_root=tmp_path,
    )
    hogging = asyncio.ensure_future(tool.run({"code": hog}, ctx))
    try:
        filled = asyncio.ensure_future(full.wait())
        await asyncio.wait({filled, hogging}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        filled.cancel()
        assert full.is_set(), hogging.result() if hogging.done() else "not full in 30 s"
        code = "import subprocess\nresult = [subprocess.run(['true']).returncode for _ in range(3)]"
        other = await Runner(tool, tmp_path)(code=code)
        assert other.ok and other.output["result"] == [0, 0, 0], other.error_message
    finally:
        ctx.cancelled.set_result(None)
        cancelled = await hogging
        await tool.close()
    assert cancelled.error_type == "cancelled"
    for uid in range(2_000_000_000, 2_000_000_002):
        assert uid_processes(uid) == []


def test_the_runner_answers_without_a_uid_of_its_own_as_a_non_root_agent_runs_it(
    tmp_path: Path,
) -> None:
    # uid -1: what an agent that is not root asks for (no guard, no drop); the fences that
    # need no root still hold.
    payload = marshal.dumps(("import os\nresult = [inputs['n'], sorted(os.environ)]", {"n": 1}))
    read_end, write_end = os.pipe()
    limits = ["5", str(256 << 20), str(1 << 20), "64"]
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-B",
            RUNNER,
            "run",
            *limits,
            "-1",
            "-1",
            "try",
            str(write_end),
        ],
        input=payload,
        pass_fds=(write_end,),
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as channel:
        document = json.loads(channel.read())
    assert done.returncode == 0, done.stderr
    assert document["result"] == [1, ["LANG", "PATH"]]


def _outcome(answer: bytes = b"", exit_code: int = 0, **fields: Any) -> RunnerOutcome:
    values: dict[str, Any] = {
        "answer": answer,
        "answer_cut": False,
        "exit_code": exit_code,
        "guarded": True,
        "stdout": "",
        "stderr": "",
        "duration_ms": 1.0,
        "cpu_seconds": 0.1,
        "peak_memory_bytes": 0.0,
    }
    values.update(fields)
    return RunnerOutcome(**values)


FENCES = Fences(
    cpu_seconds=2, memory_bytes=64 << 20, file_bytes=1 << 20, processes=8, network="isolate"
)


@pytest.mark.parametrize(
    ("outcome", "error_type", "says"),
    [
        # The guard's exit code 64 + N: the snippet's process was killed by signal N.
        (_outcome(exit_code=64 + signal.SIGXCPU), "limit_exceeded", "CPU time limit"),
        (_outcome(exit_code=64 + signal.SIGKILL, cpu_seconds=2.5), "limit_exceeded", "CPU"),
        (_outcome(exit_code=64 + signal.SIGKILL), "python_error", "killed by signal 9"),
        (_outcome(exit_code=64 + signal.SIGXFSZ), "limit_exceeded", "file size limit"),
        (_outcome(exit_code=2, stderr="MemoryError\n"), "limit_exceeded", "memory limit"),
        (
            _outcome(answer=b'{"fence":"network","message":"EPERM"}', exit_code=2),
            "forbidden",
            "CHIFFON_AGENT_PYTHON_REQUIRE_NETWORK_NAMESPACE",
        ),
        (_outcome(answer=b'{"limit":"processes"}', exit_code=0), "limit_exceeded", "8 processes"),
        (_outcome(answer=b'{"result": 1}garbage'), "invalid_result", "could not be read"),
        (_outcome(answer=b"x" * 10, answer_cut=True), "limit_exceeded", "output cap"),
        (_outcome(timed_out=True, exit_code=-9), "timeout", "3 s of wall time"),
        (_outcome(cancelled=True, exit_code=-9), "cancelled", "cancelled"),
    ],
)
def test_what_the_child_did_maps_to_one_error_type(
    outcome: RunnerOutcome, error_type: str, says: str
) -> None:
    result = answer(outcome, FENCES, timeout=3.0)
    assert (result.ok, result.error_type) == (False, error_type)
    assert says in result.error_message


def test_a_result_carries_the_snippets_own_peak_memory() -> None:
    result = answer(_outcome(answer=b'{"result":[1],"peak_kb":2048}'), FENCES, timeout=3.0)
    assert result.ok and result.output["result"] == [1]
    assert result.peak_memory_bytes == 2048 * 1024


async def test_two_agents_on_one_host_never_share_a_task_uid() -> None:
    """Each sandbox claims its uids (a lock per uid): with the same base, the second
    one's tasks run as other uids, so neither one's sweep can reach the other's tasks."""
    first, second = UidSlots(UID_CLAIM_BASE, 2), UidSlots(UID_CLAIM_BASE, 2)
    held = [await first.take(), await first.take()]
    other = [await second.take(), await second.take()]
    if os.geteuid() != 0:  # an agent that is not root keeps its own uid for every task
        assert held == other == [-1, -1]
        return
    assert held == [UID_CLAIM_BASE, UID_CLAIM_BASE + 1]
    assert other == [UID_CLAIM_BASE + 2, UID_CLAIM_BASE + 3]
