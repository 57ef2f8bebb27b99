"""The executor's settings (``CHIFFON_*`` environment variables or the config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from chiffon.core.settings import ChiffonSettings


class ExecutorSettings(ChiffonSettings):
    # How long a replica may stay silent on a run before another one takes it over.
    # A live replica signals progress every ack_wait/3, even during a long LLM call,
    # so this stays short: a dead replica's run resumes within about ack_wait.
    ack_wait_seconds: float = Field(default=5.0, ge=1.0, le=300.0)
    # Runs one replica executes at once (each a task; LLM calls are I/O-bound).
    max_concurrent_runs: int = Field(default=256, ge=1, le=10_000)
    # What one run may do before it fails with error type step_limit: node executions
    # (loops and parallel branches included; a workflow's defaults.max_node_executions
    # may lower it, never raise it), stored events, and bytes of node outputs.
    max_node_executions: int = Field(default=10_000, ge=1)
    max_events_per_run: int = Field(default=50_000, ge=100)
    max_run_output_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # chiffon/echo instead of a provider: "auto" when the provider has no key (and no
    # base URL) in development; "always" for every llm node; "never" to fail instead.
    llm_offline: Literal["auto", "always", "never"] = "auto"
    # Node outputs larger than this (JSON bytes) go to the object store by reference.
    inline_output_limit: int = Field(default=64 * 1024, ge=1024, le=512 * 1024)
    # Where this replica runs the runs and workflows projections: in a child process
    # (another core; the default), in this process's event loop, or not at all.
    projections: Literal["process", "inline", "off"] = "process"
    # The projector child's nice value. One replica's projector works at a time, and it
    # shares that replica's CPU share with the replica itself: at the same priority it
    # slows that replica, and with it a burst of runs. Lower, it folds when runs leave
    # the core idle (in larger batches, at less CPU per event); the read model lags more
    # during a burst and catches up after. 0 gives it the replica's own priority.
    projector_nice: int = Field(default=10, ge=0, le=19)
    # Agent nodes. The executor's Ed25519 private key (PEM) that signs each task's token;
    # agents hold the public half. Without it, agents refuse the executor's tasks.
    agent_signing_key_file: Path | None = None
    # Routing: an agent's score is the weighted sum of its free capacity, its recent
    # success rate and its latency (scale / (scale + mean recent latency in ms)).
    agent_weight_capacity: float = Field(default=1.0, ge=0.0, le=100.0)
    agent_weight_success: float = Field(default=1.0, ge=0.0, le=100.0)
    agent_weight_latency: float = Field(default=0.5, ge=0.0, le=100.0)
    agent_latency_scale_ms: float = Field(default=50.0, gt=0.0, le=60_000.0)
    # An agent this replica could not reach is not routed to for this long, unless it
    # registers or comes back first.
    agent_unreachable_hold_seconds: float = Field(default=60.0, ge=0.0, le=3600.0)
    # Budgets (issue 18). Per-model prices over LiteLLM's map (CHIFFON_PRICE_OVERRIDES,
    # JSON: {"openai/gpt-4o-mini": {"input_per_token": "0.00000015", ...}}).
    price_overrides: dict[str, dict[str, str | float]] = Field(default_factory=dict)
    # A call's reservation outlives its timeout by this much (then it expires: a replica
    # that died mid-call does not hold the budget for ever).
    budget_reservation_grace_seconds: float = Field(default=30.0, ge=0.0, le=3600.0)
    # Runs paused for want of budget are looked at again this often (a period rolls
    # over with no event), and at every budget event.
    budget_resume_sweep_seconds: float = Field(default=5.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _production_never_fakes_models(self) -> ExecutorSettings:
        if self.environment == "production" and self.llm_offline == "always":
            raise ValueError(
                "llm_offline=always is refused in production: it answers with chiffon/echo"
            )
        return self
