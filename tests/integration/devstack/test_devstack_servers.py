"""The server layer the dev stack and the test suites stand on: real nats-server and
PostgreSQL processes on free ports in temporary folders, stopped, killed and restarted."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import httpx
import nats
import psutil
import pytest
from nats.js.api import StreamConfig

from chiffon.devstack.ports import PortInUse, free_port, free_ports
from chiffon.devstack.servers import NatsServer, PostgresServer


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def publish(url: str, stream: str, data: bytes) -> int:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
        ack = await js.publish(f"{stream}.one", data)
        return ack.seq
    finally:
        await nc.close()


async def read(url: str, stream: str, seq: int) -> bytes:
    nc = await nats.connect(url)
    try:
        message = await nc.jetstream().get_msg(stream, seq)
        return message.data or b""
    finally:
        await nc.close()


@pytest.fixture
def nats_server(tmp_path: Path):
    port, monitor = free_ports(2)
    server = NatsServer(tmp_path / "nats", port, monitor)
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def postgres(tmp_path: Path):
    server = PostgresServer(tmp_path / "pg", free_port())
    try:
        yield server.start()
    finally:
        server.kill()


async def test_nats_jetstream_publish_survives_stop_and_kill(nats_server: NatsServer) -> None:
    first_pid = nats_server.pid
    assert first_pid is not None and nats_server.healthy()
    seq = await publish(nats_server.url, "DEVSTACK", b"kept")

    assert nats_server.stop()
    assert gone(first_pid) and not nats_server.running()
    nats_server.start()
    assert nats_server.pid not in (None, first_pid)
    assert await read(nats_server.url, "DEVSTACK", seq) == b"kept"

    # A crash: the message was acknowledged, so it is in the OS's page cache at least.
    killed_pid = nats_server.pid
    assert killed_pid is not None
    nats_server.kill()
    assert gone(killed_pid)
    nats_server.start()
    assert await read(nats_server.url, "DEVSTACK", seq) == b"kept"


async def test_nats_config_is_applied(tmp_path: Path) -> None:
    port, monitor = free_ports(2)
    server = NatsServer(tmp_path / "nats", port, monitor, sync_interval="always")
    try:
        server.start()
        async with httpx.AsyncClient(timeout=5) as client:
            varz = (await client.get(f"{server.monitor_url}/varz")).json()
        assert varz["max_payload"] == 8 * 1024 * 1024
        assert varz["jetstream"]["config"]["sync_always"] is True
        assert Path(varz["jetstream"]["config"]["store_dir"]).parent == tmp_path / "nats"
        # start() on a running server is a no-op, not a second server.
        pid = server.pid
        assert server.start().pid == pid
    finally:
        server.stop()


def test_nats_refuses_a_bad_sync_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync_interval"):
        NatsServer(tmp_path, free_port(), sync_interval="sometimes")


def test_a_busy_port_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUse) as caught:
            NatsServer(tmp_path / "nats", port).start()
        assert caught.value.port == port
        assert f"port {port}" in str(caught.value) and "CHIFFON_NATS_PORT" in str(caught.value)
        with pytest.raises(PortInUse, match="CHIFFON_POSTGRES_PORT"):
            PostgresServer(tmp_path / "pg", port).start()


async def test_postgres_over_tcp_keeps_rows_across_stop_and_kill(postgres: PostgresServer) -> None:
    assert postgres.healthy()
    connection = await asyncpg.connect(postgres.dsn)
    try:
        assert await connection.fetchval("SELECT 1") == 1
        await connection.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        await connection.execute("INSERT INTO kept VALUES (1, 'survives')")
    finally:
        await connection.close()

    first_pid = postgres.pid
    assert first_pid is not None
    assert postgres.stop()
    assert gone(first_pid) and not postgres.running()
    postgres.start()

    async def note() -> str:
        connection = await asyncpg.connect(postgres.dsn)
        try:
            return await connection.fetchval("SELECT note FROM kept WHERE id = 1")
        finally:
            await connection.close()

    assert await note() == "survives"

    # A crash (postmaster and backends SIGKILLed): committed rows come back by WAL replay.
    killed_pid = postgres.pid
    assert killed_pid is not None
    postgres.kill()
    assert gone(killed_pid)
    postgres.start()
    assert await note() == "survives"
