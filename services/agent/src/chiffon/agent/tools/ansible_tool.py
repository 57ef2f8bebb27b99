"""The ansible tool: a playbook from the agent's catalog, run by ansible-runner, its lines
streamed, lint advice on failure.

`{tool: ansible, playbook: NAME, inventory: "localhost," | NAME, extra_vars: {...}, check: false}`

- NAME is a playbook of the agent's catalog (CHIFFON_AGENT_CATALOG_DIR, see
  chiffon.catalog.catalog for the format), never a path: anything else is `forbidden`.
- ansible-runner's Python API prepares the play in a private data dir made under the
  agent's scratch root and removed after (RunnerConfig: the command, its environment, the
  display callback that writes events into the output) and turns its output into events
  (OutputEventFilter, Runner.event_callback). The tool starts ansible-playbook itself (see
  _spawn for why not Runner.run) and feeds its output to the filter as it arrives, so each
  line reaches `ctx.on_line`, and the run's SSE stream, while the play goes on.
- A cancel or the task's wall time stops the play: SIGTERM to its process group, SIGKILL
  STOP_GRACE_SECONDS later.
- The play's environment holds none of the agent's: ansible-runner seeds it with the agent's
  os.environ, so after `prepare()` only what runner itself set and ANSIBLE_ENV are kept.
- Extra vars are data (chiffon.agent.tools.ansible_vars: written `!unsafe`).
- The result: `{status, rc, hosts: {host: {ok, changed, failed, unreachable, skipped}},
  stdout_tail, failures, playbook, check}` and, when the play failed, `advice`
  (chiffon.agent.tools.lint_advice). A failed play is `playbook_failed` (the node's retry
  policy decides), a stopped one `timeout` or `cancelled`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chiffon.agent.tools.ansible_vars import check_extra_vars, extravars_yaml, inventory_for
from chiffon.agent.tools.base import (
    FORBIDDEN,
    INVALID_ARGUMENTS,
    STDOUT,
    TIMEOUT,
    Tool,
    ToolContext,
    ToolRefused,
    ToolResult,
)
from chiffon.agent.tools.lint_advice import LintRun, lint_advice
from chiffon.catalog.catalog import ROLES_DIR, Playbook, PlaybookNotFound, find_playbook

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings

ARGUMENTS = frozenset({"playbook", "inventory", "extra_vars", "check"})
PLAYBOOK_FAILED = "playbook_failed"
CANCELLED = "cancelled"
#: The commands the play may run are found here (and next to the agent's Python, where
#: ansible-playbook and ansible-lint are installed).
AGENT_PATH = "/usr/local/bin:/usr/bin:/bin"
READ_BYTES = 64 * 1024
STDOUT_TAIL_LINES = 40
STDOUT_TAIL_CHARS = 8000
MAX_LINE_CHARS = 4096
MAX_FAILURES = 20
#: After SIGTERM, how long the play has to end before SIGKILL.
STOP_GRACE_SECONDS = 2.0


@dataclass
class _Play:
    """What the event handler gathers while the play runs."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDOUT_TAIL_LINES))
    stats: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    lines: int = 0


class AnsibleTool:
    name = "ansible"

    def __init__(self, catalog: Path, *, lint_timeout: float) -> None:
        self.catalog = catalog.resolve()
        self.lint_timeout = lint_timeout
        self._bin = str(Path(sys.executable).parent)

    async def run(self, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        unknown = set(arguments) - ARGUMENTS
        if unknown:
            raise ToolRefused(INVALID_ARGUMENTS, f"unknown ansible arguments: {sorted(unknown)}")
        name = arguments.get("playbook")
        if not isinstance(name, str) or not name:
            raise ToolRefused(INVALID_ARGUMENTS, "playbook must be the name of a catalog playbook")
        try:
            playbook = find_playbook(self.catalog, name)
        except PlaybookNotFound as missing:
            raise ToolRefused(FORBIDDEN, str(missing)) from None
        extra_vars = check_extra_vars(arguments.get("extra_vars"))
        check = arguments.get("check", False)
        if not isinstance(check, bool):
            raise ToolRefused(INVALID_ARGUMENTS, "check must be true or false")
        inventory_arg = arguments.get("inventory", "localhost,")

        ctx.scratch_root.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="ansible-", dir=ctx.scratch_root))
        try:
            inventory = inventory_for(inventory_arg, self.catalog, private)
            (private / "env").mkdir()
            (private / "env" / "extravars").write_text(extravars_yaml(extra_vars))
            (private / "tmp").mkdir()
            return await self._play(playbook, inventory, check, private, ctx)
        finally:
            await asyncio.to_thread(shutil.rmtree, private, True)

    def _env(self, private: Path) -> dict[str, str]:
        """The play's whole environment (ansible-runner adds its own ANSIBLE_* after)."""
        return {
            "PATH": f"{self._bin}:{AGENT_PATH}",
            "HOME": str(private),
            "TMPDIR": str(private / "tmp"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
            "ANSIBLE_ROLES_PATH": str(self.catalog / ROLES_DIR),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            # Python's own warnings (cryptography's DSA deprecation, printed by every start of
            # ansible-playbook); Ansible's [WARNING]s are its display's, and still shown.
            "PYTHONWARNINGS": "ignore",
        }

    async def _play(
        self, playbook: Playbook, inventory: Path, check: bool, private: Path, ctx: ToolContext
    ) -> ToolResult:
        config = self._config(playbook, inventory, check, private)
        from ansible_runner.runner import Runner  # type: ignore[import-untyped]  # noqa: PLC0415
        from ansible_runner.utils import OutputEventFilter  # type: ignore[import-untyped]  # noqa: PLC0415

        play = _Play()

        def on_event(event: dict[str, Any]) -> bool:
            _gather(event, play, lambda text: ctx.on_line(STDOUT, text))
            return False  # nothing is read back from the artifacts: do not write them

        # Runner's event_callback merges each event with the data the display callback left
        # in artifacts/job_events, then calls on_event; OutputEventFilter finds the events in
        # the play's output. Runner.run is not used: see _spawn.
        runner = Runner(config, event_handler=on_event)
        events = OutputEventFilter(None, runner.event_callback, suppress_ansible_output=True)
        started = time.monotonic()
        try:
            process = await _spawn(config)
        except OSError as error:
            return ToolResult.failed("ansible_error", f"ansible-playbook could not start: {error}")
        reading = asyncio.ensure_future(_pump(process, events))
        stopped_by = ""
        try:
            done, _ = await asyncio.wait(
                {reading, ctx.cancelled}, timeout=ctx.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if reading not in done:
                stopped_by = CANCELLED if ctx.cancelled.done() else TIMEOUT
        finally:
            if process.returncode is None:
                await _stop(process)
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        rc = await process.wait()
        duration_ms = (time.monotonic() - started) * 1000
        status, rc = play_outcome("successful" if rc == 0 else "failed", rc, play.stats)
        output: dict[str, Any] = {
            "playbook": playbook.name,
            "check": check,
            "status": stopped_by or status,
            "rc": rc,
            "hosts": _hosts(play.stats),
            "stdout_tail": _tail(play.tail),
            "failures": play.failures,
        }
        if stopped_by == TIMEOUT:
            message = f"the play was stopped after {ctx.timeout:g} s"
            return _failed(output, TIMEOUT, message, duration_ms)
        if stopped_by == CANCELLED:
            return _failed(output, CANCELLED, "the play was cancelled", duration_ms)
        if status == "successful":
            return ToolResult(ok=True, output=output, duration_ms=duration_ms)
        output["advice"] = await lint_advice(playbook.path, self._lint_run(private))
        return _failed(output, PLAYBOOK_FAILED, _failure_message(output), duration_ms)

    def _config(self, playbook: Playbook, inventory: Path, check: bool, private: Path) -> Any:
        """ansible-runner's config for the play: its command, its cwd and its environment
        (the display callback that turns the play's output into events), with the agent's
        own variables taken out of the environment runner seeds from os.environ."""
        from ansible_runner.config.runner import (  # type: ignore[import-untyped]  # noqa: PLC0415
            RunnerConfig,  # imported here: 0.3 s the agent saves when it never runs a play
        )

        envvars = self._env(private)
        config = RunnerConfig(
            private_data_dir=str(private),
            project_dir=str(self.catalog),
            playbook=str(playbook.path),
            inventory=str(inventory),
            envvars=envvars,
            cmdline="--check" if check else None,
            quiet=True,
            suppress_env_files=True,
        )
        config.prepare()
        Path(config.artifact_dir, "job_events").mkdir(parents=True, exist_ok=True, mode=0o700)
        inherited = os.environ
        config.env = {
            key: value
            for key, value in config.env.items()
            if key in envvars or inherited.get(key) != value
        }
        return config

    def _lint_run(self, private: Path) -> LintRun:
        executable = shutil.which("ansible-lint", path=f"{self._bin}:{AGENT_PATH}")
        env = self._env(private)
        env["NO_COLOR"] = "1"
        return LintRun(executable or "ansible-lint", self.catalog, env, self.lint_timeout)

    async def close(self) -> None:
        return None


async def _spawn(config: Any) -> asyncio.subprocess.Process:
    """ansible-playbook in its own session, its output (stdout and stderr) on one pipe.

    Not Runner.run: it starts the play through pexpect, whose pty.fork() runs Python in the
    child between fork and exec, and a child forked from the agent (a process with gRPC's
    threads) died there of SIGSEGV in gRPC's event engine before exec (strace and the kernel
    log on the dev stack's agent: plays failed with no output, 3 of 4 on two busy stacks).
    asyncio's subprocess runs no Python in the child (subprocess's fork_exec, vfork where it
    can, as the shell tool), so no at-fork handler either: 0 of 6 plays failed since."""
    process = await asyncio.create_subprocess_exec(
        *config.command,
        cwd=config.cwd,
        env=config.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    return process


async def _pump(process: asyncio.subprocess.Process, events: Any) -> None:
    """Feed the play's output to the event filter as it arrives, until it ends."""
    assert process.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while chunk := await process.stdout.read(READ_BYTES):
        events.write(decoder.decode(chunk))
    events.write(decoder.decode(b"", final=True))
    events.close()


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the play's process group (ansible-playbook and the modules it runs),
    SIGKILL after STOP_GRACE_SECONDS."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE_SECONDS)
            return
        except TimeoutError:
            continue


def _gather(event: Mapping[str, Any], play: _Play, emit: Any) -> None:
    text = event.get("stdout")
    if isinstance(text, str) and text:
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if not line.strip() and not play.lines:
                continue
            line = line[:MAX_LINE_CHARS]
            play.lines += 1
            play.tail.append(line)
            emit(line)
    kind = event.get("event")
    data = event.get("event_data")
    if not isinstance(data, Mapping):
        return
    if kind == "playbook_on_stats":
        play.stats = dict(data)
    elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
        if len(play.failures) < MAX_FAILURES:
            result = data.get("res")
            message = result.get("msg", "") if isinstance(result, Mapping) else ""
            play.failures.append(
                {
                    "host": str(data.get("host", "")),
                    "task": str(data.get("task", "")),
                    "unreachable": str(kind == "runner_on_unreachable").lower(),
                    "message": str(message)[:1000],
                }
            )


def play_outcome(status: str, rc: object, stats: Mapping[str, Any]) -> tuple[str, int]:
    """The play's status and exit code; from the recap when a signal ended ansible-playbook.

    A play killed after its recap was printed (by the OOM killer or an operator while
    ansible-playbook shut down) has no exit code, but the recap (playbook_on_stats) says how
    it went: failures make it 2, unreachable hosts 4, as ansible-playbook's own codes; with
    no recap it failed (-1)."""
    if isinstance(rc, int) and rc >= 0:
        return status, rc
    if not stats:
        return "failed", -1
    if any(_counted(stats.get("failures"))):
        return "failed", 2
    if any(_counted(stats.get("dark"))):
        return "failed", 4
    return "successful", 0


def _counted(counts: object) -> list[int]:
    if not isinstance(counts, Mapping):
        return []
    return [value for value in counts.values() if isinstance(value, int) and value > 0]


def _hosts(stats: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    columns = {
        "ok": "ok",
        "changed": "changed",
        "failed": "failures",
        "unreachable": "dark",
        "skipped": "skipped",
    }
    hosts: dict[str, dict[str, int]] = {}
    for counts in (stats.get(key) for key in columns.values()):
        if isinstance(counts, Mapping):
            for host in counts:
                hosts.setdefault(str(host), {})
    for host, row in hosts.items():
        for column, key in columns.items():
            counts = stats.get(key)
            value = counts.get(host, 0) if isinstance(counts, Mapping) else 0
            row[column] = int(value) if isinstance(value, int) else 0
    return hosts


def _tail(lines: deque[str]) -> str:
    text = "\n".join(lines)
    return text[-STDOUT_TAIL_CHARS:]


def _failed(
    output: dict[str, Any], error_type: str, message: str, duration_ms: float
) -> ToolResult:
    rc = output["rc"]
    return ToolResult(
        ok=False,
        output=output,
        error_type=error_type,
        error_message=message,
        exit_code=rc if rc else -1,
        duration_ms=duration_ms,
    )


def _failure_message(output: Mapping[str, Any]) -> str:
    """One paragraph: where the play failed, then the lint advice's first findings."""
    failures = output["failures"]
    if failures:
        first = failures[0]
        where = f"task {first['task']!r} on {first['host']}: {first['message'] or 'failed'}"
        if len(failures) > 1:
            where += f" (and {len(failures) - 1} more)"
    else:
        last_lines = output["stdout_tail"].strip().splitlines()
        where = last_lines[-1] if last_lines else "no output"
    message = f"playbook {output['playbook']!r} failed (rc {output['rc']}): {where}"
    advice = output.get("advice") or {}
    if advice.get("error"):
        return f"{message}; no lint advice: {advice['error']}"
    findings = [f for group in advice.get("groups", []) for f in group["findings"]]
    if findings:
        top = "; ".join(f"{f['group']}: {f['rule']} (line {f['line']})" for f in findings[:5])
        message += f"; lint advice ({advice.get('total', len(findings))} findings): {top}"
    return message[:2000]


def build(settings: AgentSettings) -> Tool | None:
    """The ansible tool, serving the agent's catalog (settings refuse ansible without one)."""
    if settings.agent_catalog_dir is None:
        return None
    return AnsibleTool(
        settings.agent_catalog_dir, lint_timeout=settings.agent_ansible_lint_timeout_seconds
    )
