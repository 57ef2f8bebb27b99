"""The layout of `chiffon up --nats-nodes N`: each node's ports, folder and routes, the
stream replicas the stack asks for, and what stack.json records. Pure: nothing starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chiffon.devstack import stack
from chiffon.devstack.cluster import cluster_nodes
from chiffon.devstack.servers import NatsServer
from chiffon.devstack.settings import StackPaths, StackSettings
from chiffon.devstack.state import ProcessRecord, StackState


def three(tmp_path: Path) -> list[NatsServer]:
    return cluster_nodes(
        3,
        lambda n: tmp_path / f"nats-{n}",
        ports=[4222, 4223, 4224],
        monitor_ports=[8222, 8223, 8224],
        route_ports=[6222, 6223, 6224],
        sync_interval="always",
    )


def test_each_node_has_its_own_ports_folder_name_and_routes_to_the_others(
    tmp_path: Path,
) -> None:
    nodes = three(tmp_path)
    assert [n.url for n in nodes] == [f"nats://127.0.0.1:{p}" for p in (4222, 4223, 4224)]
    assert len({n.data_dir for n in nodes}) == 3
    config = nodes[1].config_text()
    assert 'server_name: "chiffon-1"' in config
    assert 'listen: "127.0.0.1:4223"' in config and 'http: "127.0.0.1:8223"' in config
    assert 'listen: "127.0.0.1:6223"' in config
    assert 'routes: ["nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6224"]' in config
    assert f'store_dir: "{tmp_path / "nats-1"}"' in config
    assert 'sync_interval: "always"' in config


def test_one_server_has_no_cluster_block(tmp_path: Path) -> None:
    config = NatsServer(tmp_path, 4222).config_text()
    assert 'server_name: "chiffon"' in config and "cluster {" not in config


@pytest.mark.parametrize("size", [1, 6])
def test_a_cluster_has_two_to_five_nodes(tmp_path: Path, size: int) -> None:
    ports = list(range(10))
    with pytest.raises(ValueError, match="2 to 5 nodes"):
        cluster_nodes(size, lambda n: tmp_path, ports=ports, monitor_ports=ports, route_ports=ports)


def test_streams_get_one_replica_per_node_unless_the_setting_says_otherwise() -> None:
    assert stack._stream_replicas(1, False, 3) == 3
    assert stack._stream_replicas(1, False, 1) == 1
    assert stack._stream_replicas(2, True, 3) == 2  # CHIFFON_STREAM_REPLICAS set: kept
    assert stack._stream_replicas(3, True, None) == 3  # external NATS: the setting
    with pytest.raises(stack.StackError) as caught:
        stack._stream_replicas(3, True, 1)
    assert caught.value.exit_code == stack.EXIT_USAGE
    assert "CHIFFON_STREAM_REPLICAS=3" in str(caught.value) and "--nats-nodes" in str(caught.value)


def record(replica: int, port: int) -> ProcessRecord:
    return ProcessRecord("nats", replica, 10 + replica, 1.0, f"nats://127.0.0.1:{port}", port)


def state_with(nodes: int) -> StackState:
    records = [record(n, 4222 + n) for n in range(nodes)]
    return StackState("chiffon", "", "", "", nats=records[0], nats_peers=records[1:], postgres=None)


def test_the_node_count_is_the_flag_else_the_setting_else_as_last_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHIFFON_HOME", str(tmp_path))
    monkeypatch.delenv("CHIFFON_NATS_NODES", raising=False)
    default = StackSettings()
    assert stack._nats_node_count(default, None, None) == 1
    assert stack._nats_node_count(default, None, state_with(3)) == 3
    assert stack._nats_node_count(default, 1, state_with(3)) == 1
    monkeypatch.setenv("CHIFFON_NATS_NODES", "3")
    assert stack._nats_node_count(StackSettings(), None, state_with(1)) == 3


def test_stack_json_keeps_every_node_and_reads_files_without_peers() -> None:
    state = state_with(3)
    again = StackState.from_json(json.loads(json.dumps(state.to_json())))
    assert [(r.replica, r.port) for r in again.nats_nodes] == [(0, 4222), (1, 4223), (2, 4224)]
    older = state_with(1).to_json()
    del older["nats_peers"]  # stack.json written before clusters
    assert [r.replica for r in StackState.from_json(older).nats_nodes] == [0]


def test_node_folders_are_found_in_number_order(tmp_path: Path) -> None:
    for name in ("nats-10", "nats-2", "nats", "nats-x", "nats-0"):
        (tmp_path / name).mkdir()
    assert [p.name for p in StackPaths(tmp_path).nats_nodes()] == ["nats-0", "nats-2", "nats-10"]


def test_the_cli_refuses_more_than_five_nodes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import typer

    from chiffon.devstack import commands

    monkeypatch.setenv("CHIFFON_HOME", str(tmp_path))
    app = typer.Typer()
    commands.register(app)
    done = CliRunner().invoke(app, ["up", "--nats-nodes", "6"])
    assert done.exit_code == 2 and "--nats-nodes" in done.output
    assert not (tmp_path / "stack.json").exists()


def test_each_nats_layout_has_its_own_read_models() -> None:
    """A cluster keeps its streams apart from the single server's (``nats-<i>`` beside
    ``nats``), so its read models live in a database of their own: projections
    checkpointed at the other layout's stream positions would skip its first events."""
    settings = StackSettings()
    assert stack._database_name(settings, None) == "chiffon"  # external NATS
    assert stack._database_name(settings, 1) == "chiffon"
    assert stack._database_name(settings, 3) == "chiffon_nats3"
    assert stack._database_name(settings, 5) != stack._database_name(settings, 3)
