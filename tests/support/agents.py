"""Waiting on a real agent process until its gRPC health service says SERVING."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def wait_agent_serving(
    address: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0
) -> None:
    """Poll the agent's health (with a deadline); fail with its log if it exits or stays down."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"agent exited: {log.read_text(errors='replace')}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)  # type: ignore[attr-defined]  # typeshed lists no methods
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise AssertionError(
        f"agent not serving within {timeout:g} s: {log.read_text(errors='replace')}"
    )
