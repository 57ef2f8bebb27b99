"""The ansible tool in a real agent process, over gRPC, with real ansible-runner plays
against localhost (each costs seconds: one play per behaviour, shared by its assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from google.protobuf import json_format, struct_pb2

from chiffon.agentproto.auth import generate_keypair, sign_task_token
from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.devstack.ports import free_port
from tests.integration.agent.conftest import AgentProcess, start_agent
from tests.support.agents import wait_agent_serving
from tests.support.fixtures import eventually

pytestmark = pytest.mark.timeout(240)

INJECTION = "{{ lookup('pipe', 'id') }}"

# Waits for a file the test writes only after it has seen the play's first line on the
# stream: the play can end only if its lines reach the caller while it runs.
PROBE = """\
# description: Echo the extra vars, wait for the caller, write what the play saw
# tags: test
- name: Probe
  hosts: all
  gather_facts: false
  tasks:
    - name: Show the probe
      ansible.builtin.debug:
        msg: "probe={{ probe }} nested={{ nested.inner[0] }}"
    - name: Wait for the caller
      ansible.builtin.wait_for:
        path: "{{ out_dir }}/go"
        timeout: 120
    - name: Write what the play saw
      ansible.builtin.copy:
        dest: "{{ out_dir }}/seen.txt"
        mode: "0600"
        content: "{{ probe }}\\n{{ lookup('env', 'CHIFFON_SECRET_PROBE') }}|\\n"
"""

BROKEN = """\
- name: broken
  hosts: all
  gather_facts: false
  tasks:
    - shell: echo starting | grep start
      ignore_errors: true
    - name: fail here
      command: /bin/false
"""

SLOW = """\
- name: Slow
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait a long time
      ansible.builtin.command: sleep 117
      changed_when: false
    - name: Never reached
      ansible.builtin.file:
        path: "{{ out_dir }}/reached"
        state: touch
        mode: "0600"
"""


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    (root / "playbooks").mkdir()
    (root / "roles").mkdir()
    for name, text in {"probe": PROBE, "broken": BROKEN, "slow": SLOW}.items():
        (root / "playbooks" / f"{name}.yml").write_text(text)
    return root


@pytest.fixture(scope="module")
def ansible_agent(
    tmp_path_factory: pytest.TempPathFactory, catalog: Path
) -> Iterator[AgentProcess]:
    running = start_agent(
        tmp_path_factory.mktemp("agent"),
        CHIFFON_AGENT_CAPABILITIES="shell,ansible",
        CHIFFON_AGENT_CATALOG_DIR=str(catalog),
    )
    yield running
    running.process.terminate()
    try:
        running.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait()


@pytest.fixture
async def stub(ansible_agent: AgentProcess) -> AsyncIterator[agent_pb2_grpc.AgentAsyncStub]:
    async with grpc.aio.insecure_channel(ansible_agent.address) as channel:
        yield agent_pb2_grpc.AgentStub(channel)


def _request(tool: str, timeout: float = 0.0, **arguments: Any) -> agent_pb2.ExecuteRequest:
    struct = struct_pb2.Struct()
    struct.update(arguments)
    return agent_pb2.ExecuteRequest(
        task_id=f"run-{uuid.uuid4().hex}:node:0:1",
        run_id="run",
        node_id="node",
        attempt=1,
        tool=tool,
        arguments=struct,
        timeout_seconds=timeout,
    )


async def _execute(
    stub: agent_pb2_grpc.AgentAsyncStub,
    agent: AgentProcess,
    request: agent_pb2.ExecuteRequest,
    on_line: Any = None,
) -> tuple[list[str], agent_pb2.TaskResult]:
    lines: list[str] = []
    results: list[agent_pb2.TaskResult] = []
    call = stub.Execute(request, metadata=agent.token(request.task_id), timeout=180)
    async for update in call:
        if update.WhichOneof("update") == "line":
            assert not results, "a line after the result"
            lines.append(update.line.text)
            if on_line is not None:
                await on_line(update.line.text)
        elif update.WhichOneof("update") == "result":
            results.append(update.result)
    assert len(results) == 1
    return lines, results[0]


def _processes(cmdline: list[str]) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] == cmdline:
            found.append(process)
    return found


def _output(result: agent_pb2.TaskResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output)


async def test_a_play_streams_its_lines_while_it_runs_and_extra_vars_stay_data(
    ansible_agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub, tmp_path: Path
) -> None:
    async def release_when_shown(text: str) -> None:
        if "probe=" in text:
            (tmp_path / "go").touch()

    request = _request(
        "ansible",
        playbook="probe",
        inventory="localhost,",
        extra_vars={
            "probe": INJECTION,
            "nested": {"inner": ["{{ 7 * 6 }}"]},
            "out_dir": str(tmp_path),
        },
    )
    lines, result = await _execute(stub, ansible_agent, request, release_when_shown)

    assert result.ok, (result.error_type, result.error_message, ansible_agent.tail())
    output = _output(result)
    assert output["status"] == "successful" and output["rc"] == 0
    assert output["hosts"] == {
        "localhost": {"ok": 3, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0}
    }
    # The extra vars reached the play as written, never rendered by Ansible.
    shown = next(line for line in lines if "probe=" in line)
    assert f"probe={INJECTION} nested={{{{ 7 * 6 }}}}" in shown
    # The play's environment holds none of the agent's (its secret probe is empty).
    assert (tmp_path / "seen.txt").read_text() == f"{INJECTION}\n|\n"
    assert "PLAY RECAP" in output["stdout_tail"]
    assert any(line.startswith("TASK [Wait for the caller]") for line in lines)


async def test_a_failed_play_returns_grouped_lint_advice(
    ansible_agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub
) -> None:
    lines, result = await _execute(stub, ansible_agent, _request("ansible", playbook="broken"))

    assert not result.ok and result.error_type == "playbook_failed"
    output = _output(result)
    assert output["status"] == "failed" and output["rc"] == 2
    assert output["hosts"]["localhost"]["failed"] == 1
    assert output["failures"][0]["task"] == "fail here"
    assert "fail here" in result.error_message and "lint advice" in result.error_message
    advice = output["advice"]
    order = [group["name"] for group in advice["groups"]]
    groups = {group["name"]: group["findings"] for group in advice["groups"]}
    assert {"error handling", "idempotency", "standards"} <= set(groups)
    assert {f["rule"] for f in groups["error handling"]} >= {"ignore-errors"}
    assert {f["rule"] for f in groups["idempotency"]} == {"no-changed-when"}
    assert any(f["rule"].startswith("fqcn") for f in groups["standards"])
    findings = [finding for group in groups.values() for finding in group]
    assert advice["total"] == advice["shown"] == len(findings) <= 50
    assert all(f["file"] == "playbooks/broken.yml" and f["line"] for f in findings)
    # Most severe first (all are ansible-lint errors here): then in the groups' order.
    assert order.index("error handling") < order.index("idempotency") < order.index("standards")
    assert lines, "the failed play's lines were streamed too"


async def test_a_cancel_and_a_timeout_stop_the_play(
    ansible_agent: AgentProcess, stub: agent_pb2_grpc.AgentAsyncStub, tmp_path: Path
) -> None:
    request = _request("ansible", playbook="slow", extra_vars={"out_dir": str(tmp_path)})

    async def cancel_when_waiting(text: str) -> None:
        if text.startswith("TASK [Wait a long time]"):

            async def sleeping() -> bool:
                return bool(_processes(["sleep", "117"]))

            await eventually(sleeping, timeout=60, message="the play's sleep to start")
            await stub.Cancel(
                agent_pb2.CancelRequest(task_id=request.task_id, reason="test"),
                metadata=ansible_agent.token(request.task_id),
                timeout=10,
            )

    _, cancelled = await _execute(stub, ansible_agent, request, cancel_when_waiting)
    assert cancelled.error_type == "cancelled", cancelled.error_message
    assert _output(cancelled)["status"] == "cancelled"

    # The play's whole process group was stopped: no module's `sleep 117` is left.
    async def no_sleep_left() -> bool:
        return not _processes(["sleep", "117"])

    await eventually(no_sleep_left, timeout=10, message="the play's sleep to end")

    timed = _request("ansible", timeout=3, playbook="slow", extra_vars={"out_dir": str(tmp_path)})
    _, result = await _execute(stub, ansible_agent, timed)
    assert result.error_type == "timeout" and "after 3 s" in result.error_message
    assert not (tmp_path / "reached").exists()


@pytest.mark.parametrize(
    ("arguments", "error_type", "says"),
    [
        ({"playbook": "../playbooks/probe"}, "forbidden", "not a playbook name"),
        ({"playbook": "/etc/passwd"}, "forbidden", "not a playbook name"),
        ({"playbook": "missing"}, "forbidden", "no playbook 'missing'"),
        ({"playbook": "probe", "inventory": "../../etc/hosts"}, "forbidden", "inventory"),
        ({"playbook": "probe", "extra_vars": {"ansible_connection": "ssh"}}, "forbidden", "steers"),
        ({"playbook": "probe", "extra_vars": {"a b": 1}}, "invalid_arguments", "variable name"),
        ({"playbook": "probe", "path": "/tmp"}, "invalid_arguments", "unknown"),
    ],
)
async def test_hostile_arguments_are_refused_and_the_agent_keeps_serving(
    ansible_agent: AgentProcess,
    stub: agent_pb2_grpc.AgentAsyncStub,
    arguments: dict[str, Any],
    error_type: str,
    says: str,
) -> None:
    _, refused = await _execute(stub, ansible_agent, _request("ansible", **arguments))
    assert not refused.ok and refused.error_type == error_type
    assert says in refused.error_message

    _, normal = await _execute(stub, ansible_agent, _request("shell", command="echo still here"))
    assert normal.ok and _output(normal)["stdout"] == "still here\n"


async def test_agent_start_needs_a_catalog_for_ansible_and_hands_it_to_the_agent(
    tmp_path: Path, catalog: Path
) -> None:
    private, public = generate_keypair()
    key = tmp_path / "executor.pub"
    key.write_bytes(public)
    env = {name: value for name, value in os.environ.items() if not name.startswith("CHIFFON_")}
    env["CHIFFON_AGENT_SCRATCH_DIR"] = str(tmp_path / "scratch")
    port = free_port()
    start = [
        str(Path(sys.executable).parent / "chiffon"),
        *("agent", "start", "--name", "infra", "--executor-key", str(key)),
        *("--capabilities", "shell,ansible", "--port", str(port)),
    ]

    def refused(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*start, *extra], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    without = refused()
    assert without.returncode == 2 and "--catalog DIR is required" in without.stderr
    nowhere = refused("--catalog", str(tmp_path / "nowhere"))
    assert nowhere.returncode == 2 and "no such folder" in nowhere.stderr

    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        # A relative --catalog, from the catalog's parent folder: the agent gets it resolved.
        process = subprocess.Popen(
            [*start, "--catalog", catalog.name],
            cwd=catalog.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        address = f"127.0.0.1:{port}"
        wait_agent_serving(address, process, log)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            described = await stub.Describe(agent_pb2.DescribeRequest(), timeout=10)
            assert list(described.capabilities) == ["shell", "ansible"]
            request = _request("ansible", playbook="absent")
            token = sign_task_token(private, agent_id=described.agent_id, task_id=request.task_id)
            results = [
                update.result
                async for update in stub.Execute(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=30
                )
                if update.WhichOneof("update") == "result"
            ]
        assert results[0].error_type == "forbidden"
        assert "no playbook 'absent' in the catalog" in results[0].error_message
    finally:
        process.terminate()
        process.wait(timeout=10)
