"""The agent's capability: run tools for tasks, once per task id, and say what it can do.

`AgentRuntime` holds the tasks and the tools; grpc_server.py maps the wire onto it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil
from google.protobuf import json_format, struct_pb2
from opentelemetry.trace import SpanKind

from chiffon.agent.gpu import GpuProbe
from chiffon.agent.shell import STDERR, ShellRunner, ToolRefused, parse_shell_arguments
from chiffon.agent.tasks import RunningTask, Tasks
from chiffon.agent.tools.base import Tool, ToolContext, ToolResult
from chiffon.agentproto.v1 import agent_pb2
from chiffon.agentproto.values import whole_numbers
from chiffon.core.tracing import SpanScope


@dataclass(frozen=True)
class AgentIdentity:
    agent_id: str
    name: str
    host: str
    capabilities: tuple[str, ...]
    labels: dict[str, str]


class AgentRuntime:
    """Runs tasks on this machine: the shell tool, and the tools built for its capabilities."""

    def __init__(
        self,
        identity: AgentIdentity,
        *,
        allow: tuple[str, ...],
        scratch_root: Path,
        output_cap: int,
        max_concurrency: int,
        default_timeout: float,
        max_timeout: float,
        recent_results: int,
        gpu: GpuProbe | None = None,
        tools: dict[str, Tool] | None = None,
    ) -> None:
        self.identity = identity
        self._tools = dict(tools or {})
        self._scratch_root = scratch_root
        self.gpu = gpu or GpuProbe()
        self.tasks = Tasks(max_concurrency=max_concurrency, recent=recent_results)
        self._allow = allow
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout
        self._shell = ShellRunner(
            scratch_root=scratch_root,
            output_cap=output_cap,
            max_concurrency=max_concurrency,
            gpu=self.gpu,
        )

    def execute(
        self, request: agent_pb2.ExecuteRequest, traceparent: str | None = None
    ) -> RunningTask | agent_pb2.TaskResult:
        """The task for this request: started now, already running, or recently finished.

        `traceparent` (from the call's metadata) makes the task's span a child of the
        executor's. Raises AtCapacity when a new task would exceed max_concurrency."""
        return self.tasks.start_or_attach(
            request.task_id, lambda task: self._traced(request, task, traceparent)
        )

    async def _traced(
        self, request: agent_pb2.ExecuteRequest, task: RunningTask, traceparent: str | None
    ) -> agent_pb2.TaskResult:
        # The agent's server span: its parent is the executor's client span of the task.
        with SpanScope(
            f"agent task {request.tool}",
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "chiffon.agent.v1.Agent",
                "chiffon.run_id": request.run_id,
                "chiffon.node_id": request.node_id,
                "chiffon.task_id": request.task_id,
                "chiffon.tool": request.tool,
                "chiffon.agent_id": self.identity.agent_id,
            },
            parent=traceparent,
        ) as span:
            result = await self._run(request, task)
            span.set_attribute("chiffon.ok", result.ok)
            if result.error_type:
                span.set_attribute("chiffon.error_type", result.error_type)
            return result

    def cancel(self, task_id: str, reason: str) -> bool:
        return self.tasks.cancel(task_id, reason)

    async def close(self) -> None:
        await self.tasks.stop()
        self._shell.close()
        for tool in self._tools.values():
            await tool.close()

    def _refusal(self, error_type: str, message: str) -> agent_pb2.TaskResult:
        return agent_pb2.TaskResult(
            ok=False,
            error_type=error_type,
            error_message=message,
            exit_code=-1,
            agent_id=self.identity.agent_id,
        )

    async def _run(
        self, request: agent_pb2.ExecuteRequest, task: RunningTask
    ) -> agent_pb2.TaskResult:
        if request.tool != "shell":
            return await self._run_tool(request, task)
        if "shell" not in self.identity.capabilities:
            return self._refusal("unknown_tool", "this agent does not offer the shell tool")
        try:
            arguments = json_format.MessageToDict(request.arguments)
            command = parse_shell_arguments(
                arguments,
                allow=self._allow,
                default_timeout=self._default_timeout,
                max_timeout=self._max_timeout,
                request_timeout=request.timeout_seconds,
            )

            def on_line(stream: int, text: str) -> None:
                kind = (
                    agent_pb2.OutputLine.STREAM_STDERR
                    if stream == STDERR
                    else agent_pb2.OutputLine.STREAM_STDOUT
                )
                task.publish(
                    agent_pb2.ExecuteUpdate(line=agent_pb2.OutputLine(stream=kind, text=text))
                )

            outcome = await self._shell.run(command, on_line=on_line, cancelled=task.cancelled)
        except ToolRefused as refused:
            return self._refusal(refused.error_type, refused.message)
        output = struct_pb2.Struct()
        output.update(
            {"stdout": outcome.stdout, "stderr": outcome.stderr, "exit_code": outcome.exit_code}
        )
        if outcome.cancelled:
            error_type, message = "cancelled", "the task was cancelled"
        elif outcome.timed_out:
            error_type, message = "timeout", f"killed after {command.timeout:g} s"
        elif outcome.exit_code != 0:
            error_type, message = "nonzero_exit", f"exited with {outcome.exit_code}"
        else:
            error_type, message = "", ""
        return agent_pb2.TaskResult(
            ok=not error_type,
            output=output,
            error_type=error_type,
            error_message=message,
            exit_code=outcome.exit_code,
            duration_ms=outcome.duration_ms,
            cpu_seconds=outcome.cpu_seconds,
            peak_memory_bytes=outcome.peak_memory_bytes,
            gpu_memory_bytes=outcome.gpu_memory_bytes,
            agent_id=self.identity.agent_id,
        )

    def _timeout(self, requested: float) -> float:
        if requested <= 0:
            return self._default_timeout
        return min(requested, self._max_timeout)

    async def _run_tool(
        self, request: agent_pb2.ExecuteRequest, task: RunningTask
    ) -> agent_pb2.TaskResult:
        tool = self._tools.get(request.tool)
        if tool is None:
            return self._refusal("unknown_tool", f"this agent has no tool {request.tool!r}")

        def on_line(stream: int, text: str) -> None:
            kind = (
                agent_pb2.OutputLine.STREAM_STDERR
                if stream == STDERR
                else agent_pb2.OutputLine.STREAM_STDOUT
            )
            task.publish(agent_pb2.ExecuteUpdate(line=agent_pb2.OutputLine(stream=kind, text=text)))

        ctx = ToolContext(
            task_id=request.task_id,
            timeout=self._timeout(request.timeout_seconds),
            cancelled=task.cancelled,
            on_line=on_line,
            scratch_root=self._scratch_root,
        )
        try:
            arguments = whole_numbers(json_format.MessageToDict(request.arguments))
            result = await tool.run(arguments, ctx)
        except ToolRefused as refused:
            return self._refusal(refused.error_type, refused.message)
        return self._task_result(result)

    def _task_result(self, result: ToolResult) -> agent_pb2.TaskResult:
        output = struct_pb2.Struct()
        output.update(dict(result.output))
        return agent_pb2.TaskResult(
            ok=result.ok,
            output=output,
            error_type=result.error_type,
            error_message=result.error_message,
            exit_code=result.exit_code,
            duration_ms=result.duration_ms,
            cpu_seconds=result.cpu_seconds,
            peak_memory_bytes=result.peak_memory_bytes,
            agent_id=self.identity.agent_id,
        )

    def resources(self) -> dict[str, float]:
        gpus = self.gpu.devices()
        return {
            "cpu_cores": float(os.cpu_count() or 1),
            "memory_bytes": float(psutil.virtual_memory().total),
            "gpu_count": float(len(gpus)),
            "gpu_memory_bytes": sum(gpu.vram_bytes for gpu in gpus),
        }

    def describe(self) -> agent_pb2.AgentDescription:
        return agent_pb2.AgentDescription(
            agent_id=self.identity.agent_id,
            name=self.identity.name,
            host=self.identity.host or socket.gethostname(),
            capabilities=list(self.identity.capabilities),
            resources=self.resources(),
            max_concurrency=self.tasks.max_concurrency,
            running=self.tasks.running,
        )
