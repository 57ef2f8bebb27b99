"""``chiffon up`` against servers it did not start (CHIFFON_NATS_URL, CHIFFON_DATABASE_URL):
it migrates and creates streams there, starts only the services, and `down` leaves the
external servers alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import psutil
import pytest

from chiffon.devstack.ports import free_ports
from chiffon.devstack.servers import NatsServer, PostgresServer

CHIFFON = Path(sys.executable).parent / "chiffon"
ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def external(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NatsServer, PostgresServer]]:
    folder = tmp_path_factory.mktemp("external-servers")
    nats_port, pg_port = free_ports(2)
    nats_server = NatsServer(folder / "nats", nats_port)
    postgres = PostgresServer(folder / "pg", pg_port)
    try:
        yield nats_server.start(), postgres.start()
    finally:  # also when the second start fails: never leak a server
        nats_server.stop()
        postgres.stop()


def chiffon(
    env: dict[str, str], *args: str, light: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `chiffon ...`, or with ``light`` the same command via `python -m chiffon.devstack`
    (no import of the whole CLI: much faster on a busy machine)."""
    program = [sys.executable, "-m", "chiffon.devstack"] if light else [str(CHIFFON)]
    return subprocess.run(
        [*program, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=150
    )


async def test_up_uses_external_servers_and_down_leaves_them(
    external: tuple[NatsServer, PostgresServer], tmp_path: Path
) -> None:
    nats_server, postgres = external
    names = ["NATS", "NATS_MONITOR", "POSTGRES", "GATEWAY", "REGISTRY", "COST", "TRIGGER", "AGENT"]
    ports = free_ports(len(names) + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIFFON_")}
    env.update({f"CHIFFON_{name}_PORT": str(port) for name, port in zip(names, ports)})
    env |= {
        "CHIFFON_EXECUTOR_BASE_PORT": str(ports[-1]),
        "CHIFFON_HOME": str(tmp_path / "home"),
        "CHIFFON_NATS_URL": nats_server.url,
        # A plain libpq URL, as a user would paste it; the database does not exist yet.
        "CHIFFON_DATABASE_URL": postgres.dsn_for("chiffon_external"),
        "CHIFFON_NAMESPACE": "ext",
        "CHIFFON_BOOTSTRAP_ADMIN_KEY": "chf_from_the_environment",
        "CHIFFON_READY_TIMEOUT": "90",
    }
    try:
        done = chiffon(env, "up", "--executors", "1")
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert "CHIFFON_BOOTSTRAP_ADMIN_KEY" in done.stdout
        status = json.loads(chiffon(env, "status", "--json", light=True).stdout)["services"]
        by_name: dict[str, Any] = {e["name"]: e for e in status}
        assert by_name["nats"] == {
            "name": "nats",
            "replica": 0,
            "pid": None,
            "healthy": True,
            "url": nats_server.url,
        }
        assert by_name["postgres"]["pid"] is None and by_name["postgres"]["healthy"] is True
        assert all(e["healthy"] for e in status), [e for e in status if not e["healthy"]]
        assert len([e for e in status if e["name"] == "executor"]) == 1
        # Nothing of our own was started, and the env key was not written to disk.
        assert not (tmp_path / "home" / "nats").exists()
        assert not (tmp_path / "home" / "postgres").exists()
        assert not (tmp_path / "home" / "admin-key").exists()

        # Migrations ran in the external database, streams exist on the external NATS.
        connection = await asyncpg.connect(postgres.dsn_for("chiffon_external"))
        try:
            tables = await connection.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'alembic_version_%'"
            )
        finally:
            await connection.close()
        assert tables >= 1
        nc = await nats.connect(nats_server.url)
        try:
            streams = [info.config.name for info in await nc.jetstream().streams_info()]
        finally:
            await nc.close()
        assert streams and all("ext" in name.lower() for name in streams), streams
    finally:
        down = chiffon(env, "down", light=True)
    assert down.returncode == 0, down.stderr
    # The external servers are not ours to stop.
    assert nats_server.running() and postgres.running()
    assert psutil.pid_exists(nats_server.pid or -1)
