"""What the gateway makes of the registry's rows: which agents fit a task, cursors,
heartbeats."""

from __future__ import annotations

import json

import pytest

from chiffon.gateway.agents import (
    GIB,
    AgentRow,
    aggregate_id_for,
    decode_cursor,
    decode_heartbeat,
    encode_cursor,
)
from chiffon.readmodels.queries import InvalidCursor


def row(**resources: object) -> AgentRow:
    return AgentRow(
        {
            "agent_id": "a1",
            "name": "box",
            "status": "online",
            "capabilities": ["shell"],
            "resources": resources,
            "max_concurrency": 2,
        }
    )


def test_a_gpu_task_fits_only_an_agent_with_one_gpu_that_large() -> None:
    box = row(cpu_cores=8, gpu_count=2, gpu_vram_bytes=24 * GIB)
    assert box.gpus_vram == [24 * GIB, 24 * GIB]
    assert box.fits(cpu_cores=8, gpu_vram_gb=24)
    assert not box.fits(cpu_cores=None, gpu_vram_gb=25)  # two 24s are not one 48
    assert not box.fits(cpu_cores=9, gpu_vram_gb=None)
    assert not row(cpu_cores=64).fits(cpu_cores=None, gpu_vram_gb=1)
    assert row().fits(cpu_cores=None, gpu_vram_gb=None)


def test_a_gpus_list_wins_over_the_flat_numbers() -> None:
    box = AgentRow({**row().data, "gpus": [{"name": "a", "vram_bytes": 8 * GIB}, {"x": 1}]})
    assert box.gpus_vram == [8 * GIB, 0.0]


def test_missing_or_odd_resources_show_as_nothing_rather_than_fail() -> None:
    box = AgentRow({"agent_id": "a", "name": "b", "status": "online", "resources": None})
    assert box.cpu_cores == 0 and box.gpus_vram == [] and box.capabilities == []
    assert row(cpu_cores=True).cpu_cores == 0  # a bool is not a number of cores
    shown = box.public()
    assert shown["labels"] == {} and shown["live"] is None and shown["grpc_address"] is None


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    assert decode_cursor(encode_cursor("gpu-box.1:a")) == "gpu-box.1:a"
    for bad in ("", "not-a-cursor", encode_cursor("x").replace("Y", "Z") + "!!", "cnVuOjE"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


def test_heartbeats_become_live_metrics_with_their_time() -> None:
    data = json.dumps({"at": 0, "live": {"load": [1.0, 0.5, 0.2], "running_tasks": 3}}).encode()
    live = decode_heartbeat(data)
    assert live == {
        "load": [1.0, 0.5, 0.2],
        "running_tasks": 3,
        "last_heartbeat": "1970-01-01T00:00:00+00:00",
    }
    assert decode_heartbeat(json.dumps({"at": 5, "live": None}).encode()) == {
        "last_heartbeat": "1970-01-01T00:00:05+00:00"
    }
    for junk in (None, b"", b"[]", b'{"at": "soon"}', b'{"at": 1e400}'):
        assert decode_heartbeat(junk) is None


def test_an_agent_id_with_dots_or_colons_is_found_under_the_registrys_digest_key() -> None:
    assert aggregate_id_for("gpu-box-1") == "gpu-box-1"
    key = aggregate_id_for("box.lan:50051")
    assert key.startswith("h-") and len(key) == 42 and key == aggregate_id_for("box.lan:50051")
