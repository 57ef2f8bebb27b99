"""The python tool: code runs in a subprocess fenced by rlimits, a scratch directory, an empty environment and (by default) no network.

Task: ``{code: "...", inputs: {...}, network: false}``. The snippet reads ``inputs`` (a
global) and sets ``result``; the answer is ``{result, stdout, stderr}``. The fences are
described in sandbox.py and sandbox_runner.py; this module checks the task's arguments and
turns what the child did into an answer or an error type:

- ``limit_exceeded``: CPU time (SIGXCPU, or SIGKILL at the hard limit a second later),
  memory (MemoryError under RLIMIT_AS), file size (EFBIG under RLIMIT_FSIZE, or SIGXFSZ),
  processes (a fork or thread refused under RLIMIT_NPROC), or a result over the cap;
- ``timeout``: past the task's wall time (the group is killed, the uid swept);
- ``forbidden``: the network asked and not allowed, or a fence the OS would not put up;
- ``python_error``: the snippet raised (the traceback's last lines); retried per the
  node's policy like any non-final error, since it is the snippet's own outcome;
- ``invalid_result``: ``result`` is not JSON (a set, NaN, an object).
"""

from __future__ import annotations

import json
import signal
import sysconfig
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chiffon.agent.tools.base import (
    FORBIDDEN,
    INVALID_ARGUMENTS,
    LIMIT_EXCEEDED,
    TIMEOUT,
    Tool,
    ToolContext,
    ToolRefused,
    ToolResult,
)
from chiffon.agent.tools.sandbox import Fences, RunnerOutcome, Sandbox

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings

PYTHON_ERROR = "python_error"
INVALID_RESULT = "invalid_result"
CANCELLED = "cancelled"
ARGUMENTS = frozenset({"code", "inputs", "network"})
MAX_CODE_BYTES = 1 << 20
#: How much of stderr goes in an error message when the interpreter died without answering.
STDERR_TAIL = 2000


class PythonTool:
    name = "python"

    def __init__(self, settings: AgentSettings) -> None:
        self._settings = settings
        self._sandbox = Sandbox(
            output_cap=settings.agent_output_cap_bytes,
            answer_cap=settings.agent_output_cap_bytes,
            uid_base=settings.agent_python_uid_base,
            slots=settings.agent_max_concurrency,
        )
        paths = sysconfig.get_paths()
        site = {paths["purelib"], paths["platlib"]} if settings.agent_python_site_packages else ()
        self._site_dirs = tuple(sorted(site))

    async def close(self) -> None:
        self._sandbox.close()

    def _fences(self, arguments: Mapping[str, Any]) -> Fences:
        settings = self._settings
        if arguments.get("network", False):
            if not settings.agent_python_allow_network:
                raise ToolRefused(
                    FORBIDDEN,
                    "this agent gives python tasks no network "
                    "(CHIFFON_AGENT_PYTHON_ALLOW_NETWORK is off)",
                )
            network = "host"
        else:
            network = "isolate" if settings.agent_python_require_network_namespace else "try"
        return Fences(
            cpu_seconds=settings.agent_python_cpu_seconds,
            memory_bytes=settings.agent_python_memory_bytes,
            file_bytes=settings.agent_python_file_bytes,
            processes=settings.agent_python_processes,
            network=network,
            site_dirs=self._site_dirs,
        )

    async def run(self, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        code, inputs = parse_arguments(arguments)
        fences = self._fences(arguments)
        outcome = await self._sandbox.run(
            code,
            inputs,
            fences,
            scratch_root=ctx.scratch_root,
            timeout=ctx.timeout,
            cancelled=ctx.cancelled,
            on_line=ctx.on_line,
        )
        return answer(outcome, fences, ctx.timeout)


def parse_arguments(arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    unknown = set(arguments) - ARGUMENTS
    if unknown:
        raise ToolRefused(INVALID_ARGUMENTS, f"unknown python arguments: {sorted(unknown)}")
    code = arguments.get("code")
    if not isinstance(code, str) or not code.strip():
        raise ToolRefused(INVALID_ARGUMENTS, "code must be a non-empty string")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise ToolRefused(INVALID_ARGUMENTS, f"code is over {MAX_CODE_BYTES} bytes")
    inputs = arguments.get("inputs", {})
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, dict):
        raise ToolRefused(INVALID_ARGUMENTS, "inputs must be an object")
    if not isinstance(arguments.get("network", False), bool):
        raise ToolRefused(INVALID_ARGUMENTS, "network must be true or false")
    return code, inputs


def _limit_message(limit: str, fences: Fences) -> str:
    mib = 1 << 20
    return {
        "cpu": f"CPU time limit: killed after {fences.cpu_seconds} s of CPU",
        "memory": f"memory limit: {fences.memory_bytes / mib:g} MiB of address space (MemoryError)",
        "file_size": f"file size limit: a file may not exceed {fences.file_bytes / mib:g} MiB",
        "processes": f"process limit: at most {fences.processes} processes and threads",
    }.get(limit, f"{limit} limit")


def _result(outcome: RunnerOutcome, error_type: str, message: str, **output: Any) -> ToolResult:
    return ToolResult(
        ok=not error_type,
        output={**output, "stdout": outcome.stdout, "stderr": outcome.stderr},
        error_type=error_type,
        error_message=message,
        exit_code=0 if not error_type else -1,
        duration_ms=outcome.duration_ms,
        cpu_seconds=outcome.cpu_seconds,
        peak_memory_bytes=outcome.peak_memory_bytes,
    )


def answer(outcome: RunnerOutcome, fences: Fences, timeout: float) -> ToolResult:
    """What the child did, as the tool's result."""
    if outcome.cancelled:
        return _result(outcome, CANCELLED, "the task was cancelled")
    if outcome.timed_out:
        return _result(outcome, TIMEOUT, f"killed after {timeout:g} s of wall time")
    if outcome.answer_cut:
        return _result(outcome, LIMIT_EXCEEDED, "the result is over the agent's output cap")
    document = _document(outcome.answer)
    if document is None:
        return _died(outcome, fences)
    if "result" in document:
        if document.get("peak_kb"):
            outcome.peak_memory_bytes = float(document["peak_kb"]) * 1024.0
        return _result(outcome, "", "", result=document["result"])
    if "fence" in document:
        return _fence_failed(outcome, str(document["fence"]), str(document.get("message", "")))
    if "limit" in document:
        return _result(outcome, LIMIT_EXCEEDED, _limit_message(str(document["limit"]), fences))
    if "invalid_result" in document:
        message = f"result is not JSON: {document['invalid_result']}"
        return _result(outcome, INVALID_RESULT, message)
    return _result(outcome, PYTHON_ERROR, str(document.get("error", "the snippet failed")))


def _document(data: bytes) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return {"invalid_result": "the snippet's answer could not be read"}
    return document if isinstance(document, dict) else {"invalid_result": "not an object"}


def _fence_failed(outcome: RunnerOutcome, fence: str, message: str) -> ToolResult:
    if fence == "network":
        message = (
            f"no network namespace could be made for the task ({message}); it would have "
            "had the host's network. CHIFFON_AGENT_PYTHON_REQUIRE_NETWORK_NAMESPACE=false "
            "runs such tasks with the host's network"
        )
    else:
        message = f"the {fence} fence could not be put up: {message}"
    return _result(outcome, FORBIDDEN, message)


def _died(outcome: RunnerOutcome, fences: Fences) -> ToolResult:
    """The snippet's process ended without answering: a signal, or the interpreter failed."""
    killed_by = outcome.snippet_signal
    if killed_by == signal.SIGXCPU or (
        killed_by == signal.SIGKILL and outcome.cpu_seconds >= fences.cpu_seconds
    ):
        return _result(outcome, LIMIT_EXCEEDED, _limit_message("cpu", fences))
    if killed_by == signal.SIGXFSZ:
        return _result(outcome, LIMIT_EXCEEDED, _limit_message("file_size", fences))
    if "MemoryError" in outcome.stderr:
        return _result(outcome, LIMIT_EXCEEDED, _limit_message("memory", fences))
    if killed_by:
        message = f"the snippet's process was killed by signal {killed_by}"
    else:
        message = "the snippet's process ended without a result"
    tail = outcome.stderr.strip()[-STDERR_TAIL:]
    return _result(outcome, PYTHON_ERROR, message + (f": {tail}" if tail else ""))


def build(settings: AgentSettings) -> Tool | None:
    """The python tool for these settings."""
    return PythonTool(settings)
