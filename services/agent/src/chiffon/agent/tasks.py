"""The tasks this agent runs or ran recently, by task id: a repeated Execute never runs twice.

The executor's task id is deterministic (run, node, iteration, attempt), so the same id
again is the same dispatch retried (a lost connection, a second executor replica). It
attaches to the running task (every line so far, then live) or gets the finished task's
result again from a bounded LRU. A task runs in its own asyncio task, not in the RPC: a
caller that goes away does not stop it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from chiffon.agentproto.v1 import agent_pb2


class AtCapacity(Exception):
    """The agent already runs max_concurrency tasks."""


def _new_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass
class RunningTask:
    task_id: str
    #: Done when the task is to stop. A future, not an Event: the runner waits on it with
    #: the child's exit directly, without a task per run to wait on an Event.
    cancelled: asyncio.Future[None] = field(default_factory=_new_future)
    updates: list[agent_pb2.ExecuteUpdate] = field(default_factory=list)
    result: agent_pb2.TaskResult | None = None
    runner: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def cancel(self) -> None:
        if not self.cancelled.done():
            self.cancelled.set_result(None)

    def publish(self, update: agent_pb2.ExecuteUpdate) -> None:
        self.updates.append(update)
        self._notify()

    def _notify(self) -> None:
        # One event per change, replaced at once: followers wait without a task per line.
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def follow(self) -> AsyncIterator[agent_pb2.ExecuteUpdate]:
        """Every update so far, then live ones, ending with the result."""
        sent = 0
        while True:
            wake = self._wake
            while sent < len(self.updates):
                yield self.updates[sent]
                sent += 1
            if self.result is not None:
                yield agent_pb2.ExecuteUpdate(result=self.result)
                return
            await wake.wait()


Work = Callable[[RunningTask], Awaitable[agent_pb2.TaskResult]]


class Tasks:
    """Running tasks and an LRU of recent results, keyed by task id."""

    def __init__(self, *, max_concurrency: int, recent: int) -> None:
        self._max = max_concurrency
        self._recent_size = recent
        self._running: dict[str, RunningTask] = {}
        self._recent: OrderedDict[str, agent_pb2.TaskResult] = OrderedDict()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def max_concurrency(self) -> int:
        return self._max

    def recent_result(self, task_id: str) -> agent_pb2.TaskResult | None:
        result = self._recent.get(task_id)
        if result is not None:
            self._recent.move_to_end(task_id)
        return result

    def _remember(self, task_id: str, result: agent_pb2.TaskResult) -> None:
        self._recent[task_id] = result
        self._recent.move_to_end(task_id)
        while len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)

    def start_or_attach(self, task_id: str, work: Work) -> RunningTask | agent_pb2.TaskResult:
        """The running task with this id (new if none); or its recent result."""
        existing = self._running.get(task_id)
        if existing is not None:
            return existing
        recent = self.recent_result(task_id)
        if recent is not None:
            return recent
        if len(self._running) >= self._max:
            raise AtCapacity(f"agent is at capacity ({self._max} tasks running)")
        task = RunningTask(task_id)
        self._running[task_id] = task
        task.runner = asyncio.get_running_loop().create_task(
            self._run(task, work), name=f"task:{task_id}"
        )
        return task

    async def _run(self, task: RunningTask, work: Work) -> None:
        try:
            result = await work(task)
        except asyncio.CancelledError:
            result = agent_pb2.TaskResult(
                ok=False, error_type="cancelled", error_message="the agent is stopping"
            )
            self._finish(task, result)
            raise
        except Exception as error:  # noqa: BLE001 — a bug in a tool is the task's failure
            result = agent_pb2.TaskResult(
                ok=False, error_type="agent_error", error_message=f"{type(error).__name__}: {error}"
            )
        self._finish(task, result)

    def _finish(self, task: RunningTask, result: agent_pb2.TaskResult) -> None:
        task.result = result
        self._running.pop(task.task_id, None)
        self._remember(task.task_id, result)
        task._notify()

    def cancel(self, task_id: str, reason: str) -> bool:
        """Stop a running task; True if it was running. A task not seen yet is remembered
        as cancelled, so an Execute racing behind its Cancel does not start it."""
        task = self._running.get(task_id)
        if task is not None:
            task.cancel()
            return True
        if task_id not in self._recent:
            self._remember(
                task_id,
                agent_pb2.TaskResult(
                    ok=False,
                    error_type="cancelled",
                    error_message=f"cancelled before it started: {reason}"
                    if reason
                    else "cancelled before it started",
                ),
            )
        return False

    async def stop(self) -> None:
        """Cancel every running task (the agent is shutting down)."""
        for task in list(self._running.values()):
            task.cancel()
        runners = [t.runner for t in self._running.values() if t.runner is not None]
        if runners:
            await asyncio.wait(runners, timeout=5.0)
