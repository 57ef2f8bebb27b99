"""A workflow spec becomes a LangGraph ``StateGraph``; its nodes record every step as events.

The graph is compiled once per workflow version. Per-run things (the event log, the
loop counters, the model gateway) come in through ``config["configurable"]["chiffon"]``,
an object with the ``Execution`` interface below (``execution.RunExecution``).

Durability is by replay (Temporal's model, applied to LangGraph): a resumed run runs
the graph again from the start over the run's recorded events. A node whose k-th
execution is already completed in the events returns the recorded outputs without
running; routing is a pure function of the state, so the replay retraces the same path,
re-deriving loop counters and join progress, and the first node without a recorded
outcome is where real work resumes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Protocol, TypedDict

import pydantic
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END as LG_END
from langgraph.graph import START as LG_START
from langgraph.graph import StateGraph

from chiffon.events import Envelope
from chiffon.events.runs import (
    ApprovalDecided,
    ApprovalRequested,
    ErrorInfo,
    LlmCalled,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
)
from chiffon.executor.domain import INTERRUPTED, NodeIteration, RunState
from chiffon.executor.llm import LlmGateway, ProviderError
from chiffon.workflow import (
    END,
    AgentNode,
    AnyNode,
    ApprovalNode,
    Edge,
    ExpressionError,
    LlmNode,
    SetNode,
    TemplateError,
    WorkflowSpec,
    build_output_model,
    compile_expression,
    output_json_schema,
    render_value,
)

MAX_ERROR = 3900


class NodeFailure(Exception):
    """A node failed for good (attempts spent, ``on_error: fail``): the run fails."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


class RunCancelledSignal(Exception):
    """A cancel was requested: stop at this safe point."""


class NodeError(Exception):
    """One attempt failed. ``retryable`` errors are retried per the node's policy."""

    def __init__(self, kind: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class Execution(Protocol):
    """What the graph's nodes need from the run they execute in."""

    run: RunState
    llm: LlmGateway

    def next_iteration(self, node_id: str) -> int: ...
    def edge_fired(self, edge_index: int, limit: int | None) -> bool: ...
    def check_cancel(self) -> None: ...
    def enter(self) -> None: ...
    def leave(self) -> None: ...
    def event(self, payload: Any) -> Envelope[Any]: ...
    async def append(self, payloads: list[Any], *, check_cancel: bool = True) -> None: ...
    async def interruptible(self, awaitable: Any) -> Any: ...
    async def sleep(self, seconds: float) -> None: ...
    async def wait_approval(self, node_id: str, iteration: int) -> tuple[ApprovalDecided, str]: ...
    async def completed_outputs(self, completed: NodeCompleted) -> dict[str, Any]: ...
    async def completion(
        self,
        node_id: str,
        attempt: int,
        iteration: int,
        outputs: dict[str, Any],
        duration_ms: float,
    ) -> NodeCompleted: ...


def _replace(_old: Any, new: Any) -> Any:
    return new


class NodePlan:
    """Everything about a node that does not change between runs, worked out once per
    workflow version (effective settings, parsed templates, the output model)."""

    def __init__(self, spec: WorkflowSpec, node: AnyNode) -> None:
        self.node = node
        self.retry = spec.effective_retry(node)
        self.timeout = spec.effective_timeout(node)
        self.on_error = spec.effective_on_error(node)
        self.templates = spec.templates(node)
        self.output_fields = spec.output_fields(node)
        self.set_expressions = spec.set_expressions(node)
        self.models: list[str] = []
        self.response_format: dict[str, Any] | None = None
        self.output_model: Any = None
        self.temperature = spec.effective_temperature(node)
        self.max_tokens = spec.effective_max_tokens(node)
        if isinstance(node, LlmNode):
            self.models = [spec.effective_model(node) or "", *spec.effective_fallbacks(node)]
            self.response_format = response_format_for(node)
            if node.output:
                self.output_model = build_output_model(node.id, node.output)


def _error(kind: str, message: str, node_id: str | None) -> ErrorInfo:
    return ErrorInfo(type=kind, message=message[:MAX_ERROR], node_id=node_id)


# -- the graph ------------------------------------------------------------------------


def build_graph(spec: WorkflowSpec) -> Any:
    """Compile ``spec`` into a LangGraph graph (no checkpointer: the events are the log)."""
    fields: dict[str, Any] = {key: Annotated[Any, _replace] for key in spec.state_keys()}
    state_type = TypedDict(f"{spec.name.replace('-', '_')}_state", fields)  # type: ignore[misc]
    graph: StateGraph[Any] = StateGraph(state_type)
    for node in spec.nodes:
        graph.add_node(node.id, _node_function(spec, node))
    for entry in spec.entry_nodes():
        graph.add_edge(LG_START, entry)

    indexed = list(enumerate(spec.edges))
    join_sources = {s for _, e in indexed if e.is_join for s in e.from_}
    for node in spec.nodes:
        simple = [(i, e) for i, e in indexed if not e.is_join and e.from_[0] == node.id]
        rejects = isinstance(node, ApprovalNode)
        if simple and not rejects and all(_unconditional(e) for _, e in simple):
            # Plain edges: LangGraph follows them without calling a router.
            for target in dict.fromkeys(_target(e.to) for _, e in simple):
                graph.add_edge(node.id, target)
        elif simple or rejects:
            targets = {_target(e.to) for _, e in simple} | {LG_END}
            if isinstance(node, ApprovalNode) and node.on_reject != "fail":
                targets.add(node.on_reject)
            graph.add_conditional_edges(node.id, _router(spec, node, simple), sorted(targets))
        elif node.id not in join_sources:
            graph.add_edge(node.id, LG_END)
    for i, edge in indexed:
        if not edge.is_join:
            continue
        if edge.when is None and edge.max_iterations is None:
            graph.add_edge(list(edge.from_), _target(edge.to))
        else:
            gate = f"__join_{i}"
            graph.add_node(gate, _noop)
            graph.add_edge(list(edge.from_), gate)
            graph.add_conditional_edges(
                gate, _router(spec, None, [(i, edge)]), [_target(edge.to), LG_END]
            )
    return graph.compile()


def _unconditional(edge: Edge) -> bool:
    return edge.when is None and edge.max_iterations is None


def _target(to: str) -> str:
    return LG_END if to == END else to


async def _noop(_state: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _router(
    spec: WorkflowSpec, node: AnyNode | None, edges: list[tuple[int, Edge]]
) -> Callable[[Mapping[str, Any], RunnableConfig], Awaitable[list[str]]]:
    conditions = {i: compile_expression(e.when) for i, e in edges if e.when is not None}

    # A coroutine, so LangGraph calls it on the event loop, not in a worker thread.
    async def route(state: Mapping[str, Any], config: RunnableConfig) -> list[str]:
        ctx: Execution = config["configurable"]["chiffon"]  # type: ignore[index]
        if isinstance(node, ApprovalNode) and state.get("approved") is False:
            if node.on_reject == "fail":
                comment = state.get("approval_comment")
                raise NodeFailure(
                    _error(
                        "rejected",
                        f"approval {node.id!r} was rejected" + (f": {comment}" if comment else ""),
                        node.id,
                    )
                )
            return [node.on_reject]
        targets: list[str] = []
        for index, edge in edges:
            condition = conditions.get(index)
            if condition is not None:
                try:
                    fires = bool(condition.evaluate(state))
                except ExpressionError as error:
                    raise NodeFailure(
                        _error(
                            "condition_error",
                            f"edges[{index}].when {edge.when!r}: {error}",
                            node.id if node is not None else None,
                        )
                    ) from None
                if not fires:
                    continue
            if not ctx.edge_fired(index, edge.max_iterations):
                continue
            target = _target(edge.to)
            if target not in targets:
                targets.append(target)
        return targets or [LG_END]

    return route


def _node_function(spec: WorkflowSpec, node: AnyNode) -> Callable[..., Any]:
    plan = NodePlan(spec, node)

    async def run_node(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        ctx: Execution = config["configurable"]["chiffon"]  # type: ignore[index]
        ctx.enter()
        try:
            return await execute_node(ctx, plan, state)
        finally:
            ctx.leave()

    run_node.__name__ = f"node_{node.id}"
    return run_node


# -- one node -------------------------------------------------------------------------


async def execute_node(ctx: Execution, plan: NodePlan, state: dict[str, Any]) -> dict[str, Any]:
    node = plan.node
    iteration = ctx.next_iteration(node.id)
    recorded = ctx.run.nodes.get((node.id, iteration))
    if recorded is not None and recorded.completed is not None:
        return await ctx.completed_outputs(recorded.completed)  # replay: never runs twice
    if recorded is not None and recorded.final_failure is not None:
        return _after_final_failure(plan, recorded.final_failure.error)
    ctx.check_cancel()
    if isinstance(node, SetNode):
        return await _run_set(ctx, plan, node, state, iteration)
    if isinstance(node, ApprovalNode):
        return await _run_approval(ctx, plan, node, state, iteration, recorded)
    assert isinstance(node, (LlmNode, AgentNode))
    return await _run_with_retries(ctx, plan, node, state, iteration, recorded)


def _after_final_failure(plan: NodePlan, error: ErrorInfo) -> dict[str, Any]:
    if plan.on_error == "continue":
        return dict.fromkeys(plan.output_fields)
    raise NodeFailure(error)


async def _run_set(
    ctx: Execution, plan: NodePlan, node: SetNode, state: dict[str, Any], iteration: int
) -> dict[str, Any]:
    # Stored with the outcome, but dated when the node started.
    node_started = ctx.event(
        NodeStarted(node_id=node.id, node_type="set", attempt=1, iteration=iteration)
    )
    started = time.perf_counter()
    outputs: dict[str, Any] = {}
    try:
        for key, expression in plan.set_expressions.items():
            outputs[key] = expression.evaluate(state)
        json.dumps(outputs)
    except (ExpressionError, TypeError, ValueError) as error:
        info = _error("expression_error", f"{node.id}: {error}", node.id)
        await ctx.append(
            [
                node_started,
                NodeFailed(
                    node_id=node.id,
                    attempt=1,
                    iteration=iteration,
                    error=info,
                    will_retry=False,
                    duration_ms=0.0,
                ),
            ]
        )
        raise NodeFailure(info) from None
    duration = (time.perf_counter() - started) * 1000
    completed = await ctx.completion(node.id, 1, iteration, outputs, duration)
    await ctx.append([node_started, completed])
    return outputs


async def _run_approval(
    ctx: Execution,
    plan: NodePlan,
    node: ApprovalNode,
    state: dict[str, Any],
    iteration: int,
    recorded: NodeIteration | None,
) -> dict[str, Any]:
    if recorded is None or not recorded.started:
        try:
            message = plan.templates["message"].render(state)
        except TemplateError as error:
            raise NodeFailure(
                _error("template_error", f"{node.id}.message: {error}", node.id)
            ) from None
        await ctx.append(
            [
                NodeStarted(node_id=node.id, node_type="approval", attempt=1, iteration=iteration),
                ApprovalRequested(node_id=node.id, message=message[:65_536], iteration=iteration),
            ]
        )
    started = time.perf_counter()
    decision, _by = await ctx.wait_approval(node.id, iteration)
    outputs = {"approved": decision.approved, "approval_comment": decision.comment}
    completed = await ctx.completion(
        node.id, 1, iteration, outputs, (time.perf_counter() - started) * 1000
    )
    await ctx.append([completed], check_cancel=False)
    return outputs


async def _run_with_retries(
    ctx: Execution,
    plan: NodePlan,
    node: LlmNode | AgentNode,
    state: dict[str, Any],
    iteration: int,
    recorded: NodeIteration | None,
) -> dict[str, Any]:
    policy = plan.retry
    timeout = plan.timeout
    failures = recorded.retry_failures if recorded else 0
    attempt = (len(recorded.started) if recorded else 0) + 1
    pending: list[Any] = []
    if recorded is not None and recorded.open_attempt is not None:
        # The replica that ran this attempt stopped before recording its outcome.
        pending.append(
            NodeFailed(
                node_id=node.id,
                attempt=recorded.open_attempt,
                iteration=iteration,
                error=_error(
                    INTERRUPTED,
                    "the executor running this attempt stopped; the node runs again",
                    node.id,
                ),
                will_retry=True,
                duration_ms=0.0,
            )
        )
    # A node whose every model is the in-process offline one calls nothing outside this
    # process: its start is recorded with its outcome, in one append. Were the replica
    # to die in between, nothing was recorded and the node runs again, to the same end.
    start_with_outcome = isinstance(node, LlmNode) and all(
        model and ctx.llm.in_process(model) for model in plan.models
    )
    while True:
        started_event = NodeStarted(
            node_id=node.id, node_type=node.type, attempt=attempt, iteration=iteration
        )
        if start_with_outcome:
            ctx.check_cancel()
            pending.append(ctx.event(started_event))  # dated now, appended with the outcome
        else:
            await ctx.append([*pending, started_event])
            pending = []
        calls: list[LlmCalled] = []
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if isinstance(node, LlmNode):
                    outputs = await _llm_attempt(ctx, plan, node, state, attempt, calls, timeout)
                else:
                    outputs = await _agent_attempt(ctx, node, state)
        except TimeoutError:
            error = NodeError("timeout", f"attempt {attempt} timed out after {timeout:g}s")
        except NodeError as failed:
            error = failed
        else:
            duration = (time.perf_counter() - started) * 1000
            completed = await ctx.completion(node.id, attempt, iteration, outputs, duration)
            await ctx.append([*pending, *calls, completed], check_cancel=False)
            return outputs
        duration = (time.perf_counter() - started) * 1000
        failures += 1
        will_retry = error.retryable and failures < policy.attempts
        delay = policy.delay(failures) if will_retry else None
        info = _error(error.kind, str(error), node.id)
        await ctx.append(
            [
                *pending,
                *calls,
                NodeFailed(
                    node_id=node.id,
                    attempt=attempt,
                    iteration=iteration,
                    error=info,
                    will_retry=will_retry,
                    retry_in_ms=None if delay is None else delay * 1000,
                    duration_ms=duration,
                ),
            ],
            check_cancel=False,
        )
        pending = []
        if not will_retry:
            return _after_final_failure(plan, info)
        await ctx.sleep(delay or 0.0)
        attempt += 1


def response_format_for(node: LlmNode) -> dict[str, Any] | None:
    if not node.output:
        return None
    return {
        "type": "json_schema",
        "json_schema": {
            "name": f"{node.id}_output",
            "schema": output_json_schema(node.output),
            "strict": True,
        },
    }


def parse_output(node: LlmNode, text: str, output_model: Any = None) -> dict[str, Any]:
    """The node's state update from the model's answer; ``NodeError`` if it does not fit."""
    if not node.output:
        return {node.id: text}
    body = text.strip()
    if body.startswith("```"):  # a fenced answer: ```json ... ```
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        data = json.loads(body)
        model = output_model or build_output_model(node.id, node.output)
        result: dict[str, Any] = model.model_validate(data).model_dump(by_alias=True)
        return result
    except (json.JSONDecodeError, pydantic.ValidationError, TypeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, pydantic.ValidationError):
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                for e in error.errors(include_url=False)[:5]
            )
        raise NodeError(
            "invalid_output", f"the answer does not match the output schema: {detail}"
        ) from None


async def _llm_attempt(
    ctx: Execution,
    plan: NodePlan,
    node: LlmNode,
    state: dict[str, Any],
    attempt: int,
    calls: list[LlmCalled],
    timeout: float | None,
) -> dict[str, Any]:
    templates = plan.templates
    try:
        prompt = templates["prompt"].render(state)
        system = templates["system"].render(state) if "system" in templates else None
    except TemplateError as error:
        raise NodeError("template_error", f"{node.id}: {error}", retryable=False) from None
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    models = plan.models
    deadline = None if timeout is None else time.monotonic() + timeout
    last: ProviderError | None = None
    for index, model in enumerate(models):
        remaining = None if deadline is None else max(0.05, deadline - time.monotonic())
        started = time.perf_counter()
        call = ctx.llm.complete(
            model,
            messages,
            response_format=plan.response_format,
            temperature=plan.temperature,
            max_tokens=plan.max_tokens,
            timeout=remaining,
        )
        try:
            # An in-process answer is not worth the tasks that let a cancel interrupt it.
            reply = await (call if ctx.llm.in_process(model) else ctx.interruptible(call))
        except ProviderError as error:
            last = error
            target, provider = ctx.llm.resolve(model) if model else (model, "unknown")
            calls.append(
                LlmCalled(
                    node_id=node.id,
                    attempt=attempt,
                    provider=provider,
                    model=target,
                    latency_ms=(time.perf_counter() - started) * 1000,
                    ok=False,
                    error=str(error)[:MAX_ERROR],
                    fallback_index=index,
                )
            )
            continue
        calls.append(
            LlmCalled(
                node_id=node.id,
                attempt=attempt,
                provider=reply.provider,
                model=reply.model,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                latency_ms=reply.latency_ms,
                finish_reason=reply.finish_reason,
                fallback_index=index,
            )
        )
        return parse_output(node, reply.text, plan.output_model)
    assert last is not None
    tried = ", ".join(models)
    raise NodeError(last.kind, f"no model answered (tried {tried}): {last}")


async def _agent_attempt(ctx: Execution, node: AgentNode, state: dict[str, Any]) -> dict[str, Any]:
    try:
        render_value(node.task, state)
    except TemplateError as error:
        raise NodeError("template_error", f"{node.id}.task: {error}", retryable=False) from None
    # Agent dispatch (router + gRPC) comes with the agents service; until then no
    # agent can take the task.
    needed = ", ".join(node.requires)
    raise NodeError("no_agent", f"no agent available for capabilities [{needed}]")
