"""``up``, ``down`` and ``status`` of the whole stack, built from servers and supervisor.

Output goes through ``say`` (the CLI passes ``typer.echo``); failures raise
``StackError`` carrying the exit code, so the CLI prints one clear message and no
traceback.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from chiffon.devstack import supervisor
from chiffon.devstack.cluster import NatsCluster, cluster_nodes
from chiffon.devstack.keys import AgentKeys, ensure_agent_keys, ensure_trigger_secrets_key
from chiffon.devstack.ports import PortInUse, accepts_connections, require_free
from chiffon.devstack.procs import ProcessRef
from chiffon.devstack.servers import NatsServer, PostgresServer, ServerError, tail
from chiffon.devstack.settings import StackPaths, StackSettings, describe, project_root
from chiffon.devstack.state import (
    ProcessRecord,
    StackState,
    admin_key,
    load_state,
    save_state,
    write_cli_config,
)
from chiffon.devstack.supervisor import SERVICES, ServiceSpec

Say = Callable[[str], None]

EXIT_FAILED = 1
EXIT_USAGE = 2  # a busy port or a bad setting: something for the user to change


class StackError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SetupError(Exception):
    """The database or NATS refused to be set up; the message says which and why."""


def _prepare_servers(
    database_url: str, nats_url: str, namespace: str, stream_replicas: int
) -> None:
    """Every migration, then every stream: what ``chiffon migrate`` does in a deployment.

    Idempotent, so every ``up`` runs it (also against external servers) and a new
    migration or stream lands with the next ``up``.
    """
    # Imported here, not at the top: SQLAlchemy, Alembic, every package's migrations and
    # nats-py take seconds to import, and `chiffon status` and `down` never need them.
    from chiffon.core.migrate import MigrationError, prepare_database
    from chiffon.core.settings import ChiffonSettings
    from chiffon.eventstore import EventStoreError
    from chiffon.eventstore.provision import create_streams

    # The duplicate window: the setting the services read.
    service = ChiffonSettings(nats_url=nats_url, namespace=namespace)
    try:
        prepare_database(database_url)
        asyncio.run(
            create_streams(
                nats_url,
                namespace,
                replicas=stream_replicas,
                duplicate_window=service.duplicate_window_seconds,
                name="chiffon-up",
            )
        )
    except (MigrationError, EventStoreError) as error:
        raise SetupError(str(error)) from None


@contextmanager
def _locked(paths: StackPaths) -> Iterator[None]:
    """One ``up`` or ``down`` at a time per data folder (two would race on ports)."""
    paths.home.mkdir(parents=True, exist_ok=True)
    with (paths.home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- the servers, as the stack runs them --------------------------------------------


def nats_server(settings: StackSettings, state: StackState | None) -> NatsServer:
    """The stack's NATS server; while one runs, on the ports it was started with."""
    port, monitor = settings.nats_port, settings.nats_monitor_port
    recorded = state.nats if state else None
    if recorded and not recorded.external and recorded.alive():
        port, monitor = recorded.port or port, recorded.monitor_port or monitor
    return NatsServer(
        settings.paths.nats,
        port,
        monitor,
        settings.nats_sync_interval,
        log_file=settings.paths.log("nats"),
    )


def nats_nodes(settings: StackSettings, state: StackState | None, count: int) -> list[NatsServer]:
    """The stack's NATS: one server (``count`` 1) or the nodes of a cluster; nodes that
    run keep the ports they were started with."""
    if count == 1:
        return [nats_server(settings, state)]
    ports = [settings.nats_port + n for n in range(count)]
    monitors = [settings.nats_monitor_port + n for n in range(count)]
    routes = [settings.nats_cluster_port + n for n in range(count)]
    for record in state.nats_nodes if state else []:
        n = record.replica
        if n < count and not record.external and record.alive():
            ports[n] = record.port or ports[n]
            monitors[n] = record.monitor_port or monitors[n]
            routes[n] = record.route_port or routes[n]
    return cluster_nodes(
        count,
        settings.paths.nats_node,
        ports=ports,
        monitor_ports=monitors,
        route_ports=routes,
        sync_interval=settings.nats_sync_interval,
        log_file=lambda n: settings.paths.log(f"nats-{n}"),
    )


def _recorded_nats(settings: StackSettings, state: StackState, record: ProcessRecord) -> NatsServer:
    """The server of a node that ``up`` recorded (for its health)."""
    folder = settings.paths.nats_node(record.replica) if state.nats_peers else settings.paths.nats
    return NatsServer(folder, record.port or settings.nats_port, record.monitor_port)


def _running_nats(paths: StackPaths) -> dict[int, NatsServer]:
    """Every NATS of this data folder that runs: the one server as key -1, cluster
    nodes by their number (found by data folder, so even without stack.json)."""
    single = NatsServer(paths.nats)
    running = {-1: single} if single.running() else {}
    for folder in paths.nats_nodes():
        node = NatsServer(folder)
        if node.running():
            running[int(folder.name[5:])] = node
    return running


def postgres_server(settings: StackSettings, state: StackState | None) -> PostgresServer:
    port = settings.postgres_port
    recorded = state.postgres if state else None
    if recorded and not recorded.external and recorded.alive():
        port = recorded.port or port
    return PostgresServer(settings.paths.postgres, port, log_file=settings.paths.log("postgres"))


def _server_record(
    name: str, ref: ProcessRef | None, url: str, port: int, log: str
) -> ProcessRecord:
    return ProcessRecord(
        name=name,
        replica=0,
        pid=ref.pid if ref else None,
        create_time=ref.create_time if ref else None,
        url=url,
        port=port,
        log=log,
    )


def _external_record(name: str, url: str) -> ProcessRecord:
    return ProcessRecord(name=name, replica=0, pid=None, create_time=None, url=url, external=True)


# -- up -----------------------------------------------------------------------------


def _nats_node_count(settings: StackSettings, flag: int | None, previous: StackState | None) -> int:
    """--nats-nodes, else CHIFFON_NATS_NODES if set, else as last time, else 1."""
    if flag is not None:
        return flag
    if "nats_nodes" in settings.model_fields_set or previous is None or previous.nats is None:
        return settings.nats_nodes
    return 1 if previous.nats.external else len(previous.nats_nodes)


def _refuse_another_layout(paths: StackPaths, count: int) -> None:
    """A running NATS of another size is not resized in place: its streams' replicas
    and its nodes' data folders belong to that layout."""
    running = _running_nats(paths)
    wanted = {-1} if count == 1 else set(range(count))
    stray = sorted(set(running) - wanted)
    if stray:
        now = "one server" if -1 in running else f"a cluster of {len(running)} nodes"
        raise StackError(
            f"error: NATS runs as {now}; run `chiffon down` before `chiffon up "
            f"--nats-nodes {count}` (data is kept per layout)",
            EXIT_USAGE,
        )


def _stream_replicas(service_replicas: int, explicit: bool, nodes: int | None) -> int:
    """Copies of each stream: one per node of the stack's own NATS unless
    CHIFFON_STREAM_REPLICAS says otherwise; CHIFFON_STREAM_REPLICAS for external NATS."""
    if nodes is None:
        return service_replicas
    replicas = service_replicas if explicit else nodes
    if replicas > nodes:
        raise StackError(
            f"error: CHIFFON_STREAM_REPLICAS={replicas} needs as many NATS nodes, "
            f"and the stack runs {nodes} (set CHIFFON_NATS_NODES or --nats-nodes)",
            EXIT_USAGE,
        )
    return replicas


def _replicas(settings: StackSettings, flag: int | None, previous: StackState | None) -> int:
    """--executors, else CHIFFON_EXECUTOR_REPLICAS if set, else as last time, else 2."""
    if flag is not None:
        return flag
    if "executor_replicas" in settings.model_fields_set or previous is None:
        return settings.executor_replicas
    recorded = [record for record in previous.services if record.name == "executor"]
    return len(recorded) if recorded else settings.executor_replicas


def _specs(settings: StackSettings, replicas: int) -> list[ServiceSpec]:
    specs = []
    for name in SERVICES:
        count = replicas if name == "executor" else 1
        specs += [ServiceSpec(name, n, settings.service_port(name, n)) for n in range(count)]
    return specs


def _order(record: ProcessRecord) -> tuple[int, int]:
    return SERVICES.index(record.name), record.replica


def up(
    settings: StackSettings,
    say: Say,
    executors: int | None = None,
    nats_nodes: int | None = None,
) -> StackState:
    """Start whatever is missing and wait until every service is ready."""
    paths = settings.paths
    try:
        with _locked(paths):
            return _up(settings, paths, say, executors, nats_nodes)
    except PortInUse as error:
        raise StackError(f"error: {error}", EXIT_USAGE) from None
    except (ServerError, SetupError) as error:
        raise StackError(f"error: {error}") from None


def _check_service_settings(settings: StackSettings) -> tuple[int, bool]:
    """Validate the settings every service will read from this environment, before
    starting anything: a bad CHIFFON_LOG_LEVEL is one line now, not seven crashed
    services later. Returns CHIFFON_STREAM_REPLICAS and whether it was set."""
    from pydantic import SecretStr, ValidationError

    from chiffon.core.settings import ChiffonSettings

    try:
        # The URLs and the port are set by `up` itself; the rest comes from the environment.
        service = ChiffonSettings(
            nats_url="nats://127.0.0.1:4222",
            database_url=SecretStr("postgresql://postgres@127.0.0.1/chiffon"),
            namespace=settings.namespace,
        )
    except ValidationError as error:
        raise StackError("\n".join(describe(error)), EXIT_USAGE) from None
    except ValueError as error:  # CHIFFON_CONFIG_FILE naming a missing file
        raise StackError(f"error: {error}", EXIT_USAGE) from None
    return service.stream_replicas, "stream_replicas" in service.model_fields_set


def _check_ports(
    settings: StackSettings,
    nats: list[NatsServer] | None,
    postgres: PostgresServer | None,
    missing: list[ServiceSpec],
) -> None:
    """Every port first, before anything starts: a busy port must not leave half a stack.
    Ports of what already runs are ours, so only what is missing is checked."""
    for node in nats or []:
        if not node.running():
            node.require_free_ports()
    if postgres is not None and not postgres.running():
        require_free(postgres.port, "CHIFFON_POSTGRES_PORT", "PostgreSQL")
    for spec in missing:
        require_free(spec.port, settings.port_setting(spec.name), f"{spec.label} HTTP")
        if spec.name == "agent":
            require_free(settings.agent_grpc_port, "CHIFFON_AGENT_GRPC_PORT", "agent gRPC")


# Secrets each service alone may see: every other service's environment drops them.
SECRETS = ("CHIFFON_BOOTSTRAP_ADMIN_KEY", "CHIFFON_BOOTSTRAP_AGENT_CREDENTIAL")


#: The local agent's catalog: the homelab example's playbooks (examples/homelab/).
HOMELAB_CATALOG = ("examples", "homelab", "catalog")


def _agent_tools(paths: StackPaths) -> dict[str, str]:
    """The local agent's tools besides `shell`: `python`; `files` beneath
    <home>/agent-files; `http` with no host allowed (CHIFFON_AGENT_HTTP_ALLOW_HOSTS opens
    some); `ansible` and `catalog` serving the homelab example's catalog, when this checkout
    has it (the ansible tool refuses to start without a catalog)."""
    files_root = paths.home / "agent-files"
    files_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    capabilities = ["shell", "python", "files", "http"]
    env = {"CHIFFON_AGENT_FILES_ROOTS": str(files_root)}
    catalog = project_root().joinpath(*HOMELAB_CATALOG)
    if catalog.is_dir():
        capabilities += ["ansible", "catalog"]
        env["CHIFFON_AGENT_CATALOG_DIR"] = str(catalog)
    env["CHIFFON_AGENT_CAPABILITIES"] = ",".join(capabilities)
    return env


def _agent_env(settings: StackSettings, keys: AgentKeys, paths: StackPaths) -> dict[str, str]:
    """The local agent: registered as `local`, `shell` with the safe default allow-list and
    the tools of `_agent_tools`."""
    env = {
        "CHIFFON_AGENT_NAME": "local",
        "CHIFFON_AGENT_ID": "local",
        **_agent_tools(paths),
        "CHIFFON_AGENT_GRPC_PORT": str(settings.agent_grpc_port),
        "CHIFFON_EXECUTOR_PUBLIC_KEY_FILE": str(keys.public_key),
        "CHIFFON_REGISTRY_URL": f"http://127.0.0.1:{settings.service_port('registry')}",
        "CHIFFON_AGENT_CREDENTIAL_FILE": str(keys.agent_credential),
    }
    if settings.agent_allow:
        env["CHIFFON_AGENT_ALLOW"] = settings.agent_allow
    return env


def _spawn_missing(
    missing: list[ServiceSpec],
    state: StackState,
    paths: StackPaths,
    admin: str,
    settings: StackSettings,
    keys: AgentKeys,
    stream_replicas: int,
) -> set[str]:
    """Start every missing service with the stack's URLs; returns the labels started."""
    shared = {
        "CHIFFON_NATS_URL": state.nats_url,
        "CHIFFON_DATABASE_URL": state.database_url,
        "CHIFFON_NAMESPACE": state.namespace,
        # Services create or update the streams at start too: with the same replicas,
        # or an R3 stream would be set back to R1 by the first service to start.
        "CHIFFON_STREAM_REPLICAS": str(stream_replicas),
    }
    own: dict[str, dict[str, str]] = {
        "gateway": {
            "CHIFFON_BOOTSTRAP_ADMIN_KEY": admin,
            # A trigger's hook_url: the trigger service here, unless a public address
            # (a proxy in front of it) was given.
            "CHIFFON_TRIGGER_PUBLIC_URL": os.environ.get("CHIFFON_TRIGGER_PUBLIC_URL")
            or f"http://127.0.0.1:{settings.service_port('trigger')}",
        },
        "registry": {"CHIFFON_BOOTSTRAP_AGENT_CREDENTIAL": keys.credential()},
        "executor": {"CHIFFON_AGENT_SIGNING_KEY_FILE": str(keys.signing_key)},
        "agent": _agent_env(settings, keys, paths),
        "trigger": {
            "CHIFFON_TRIGGER_SECRETS_KEY_FILE": str(ensure_trigger_secrets_key(paths.keys))
        },
    }
    base = supervisor.current_env()
    cwd = project_root()
    for spec in missing:
        extra = own.get(spec.name, {})
        drop = [name for name in SECRETS if name not in extra]
        env = supervisor.service_env(base, {**shared, **extra}, drop=drop)
        state.services.append(supervisor.spawn(spec, env, paths.log(spec.label), cwd))
    state.services.sort(key=_order)
    return {spec.label for spec in missing}


def _up(
    settings: StackSettings,
    paths: StackPaths,
    say: Say,
    executors: int | None,
    nats_node_count: int | None,
) -> StackState:
    service_replicas, replicas_set = _check_service_settings(settings)
    previous = load_state(paths.state_file)
    node_count = _nats_node_count(settings, nats_node_count, previous)
    specs = _specs(settings, _replicas(settings, executors, previous))
    wanted = {spec.label for spec in specs}
    running = {r.label: r for r in (previous.services if previous else []) if supervisor.is_ours(r)}
    surplus = [record for label, record in running.items() if label not in wanted]
    missing = [spec for spec in specs if spec.label not in running]

    nats = None if settings.external_nats else nats_nodes(settings, previous, node_count)
    postgres = None if settings.external_database else postgres_server(settings, previous)
    stream_replicas = _stream_replicas(
        service_replicas, replicas_set, None if nats is None else len(nats)
    )
    if nats is not None:
        _refuse_another_layout(paths, len(nats))

    _check_ports(settings, nats, postgres, missing)
    nats_records = _start_nats(settings, nats, say)
    nats_url = ",".join(record.url for record in nats_records)
    postgres_record, database_url = _start_postgres(
        settings, postgres, say, _database_name(settings, None if nats is None else len(nats))
    )

    say(f"applying database migrations and creating streams (R{stream_replicas}) ...")
    _prepare_servers(database_url, nats_url, settings.namespace, stream_replicas)

    from_env = (
        settings.bootstrap_admin_key.get_secret_value() if settings.bootstrap_admin_key else None
    )
    key, key_source = admin_key(paths.admin_key, from_env)

    state = StackState(
        namespace=settings.namespace,
        nats_url=nats_url,
        database_url=database_url,
        gateway_url=f"http://127.0.0.1:{settings.service_port('gateway')}",
        nats=nats_records[0],
        postgres=postgres_record,
        services=[record for label, record in running.items() if label in wanted],
        nats_peers=nats_records[1:],
    )
    gateway = running.get("gateway")
    if gateway is not None:
        state.gateway_url = gateway.url

    if surplus:
        supervisor.stop(surplus, settings.stop_timeout)
        say("stopped surplus replicas: " + ", ".join(r.label for r in surplus))

    keys = ensure_agent_keys(paths.keys)
    started = _spawn_missing(missing, state, paths, key, settings, keys, stream_replicas)
    for record in state.services:
        verb = "started" if record.label in started else "running"
        say(f"{verb} {record.label:<11} pid {record.pid:<8} {record.url}")
    # Saved before waiting: if start-up fails, `down` and `status` still see everything.
    save_state(paths.state_file, state)
    # Point the CLI at the key file only if that is the key the gateway got.
    key_file = paths.admin_key if key_source == str(paths.admin_key) else None
    write_cli_config(paths.cli_config, state, key_file)

    if not missing:
        say("Chiffon is already up; nothing to start.")
    say(
        f"waiting for {len(state.services)} services to be ready (up to {settings.ready_timeout:g}s) ..."
    )
    failures = supervisor.wait_ready(state.services, settings.ready_timeout)
    if failures:
        raise StackError(_not_ready_report(failures, settings.ready_timeout))

    _print_next_steps(state, paths, key_source, say)
    return state


def _not_ready_report(failures: list[supervisor.NotReady], timeout: float) -> str:
    """One line naming every service not ready, then the log of the first one."""
    first = failures[0].record
    if failures[0].exited:
        lines = [f"error: {first.label} exited during start-up"]
    else:
        names = ", ".join(f"{f.record.label} ({f.reason})" for f in failures)
        lines = [f"error: not ready after {timeout:g}s: {names}"]
    if first.log:
        lines += [f"last lines of {first.log} (this start):", _this_start(first.log)]
    lines.append("See `chiffon status` and `chiffon logs NAME`; `chiffon down` stops everything.")
    return "\n".join(lines)


def _this_start(log: str, lines: int = 25) -> str:
    """The end of a service log, from the marker `spawn` wrote at this start on."""
    text = tail(Path(log), 400).splitlines()
    starts = [n for n, line in enumerate(text) if line.startswith(supervisor.START_MARKER)]
    return "\n".join(text[starts[-1] if starts else 0 :][-lines:])


def _start_nats(
    settings: StackSettings, nodes: list[NatsServer] | None, say: Say
) -> list[ProcessRecord]:
    """Start the stack's NATS (one server, or every node of a cluster) unless it runs."""
    if nodes is None:
        assert settings.nats_url is not None
        say(f"NATS        external   {settings.nats_url}")
        return [_external_record("nats", settings.nats_url)]
    was_running = [node.running() for node in nodes]
    if len(nodes) == 1:
        nodes[0].start()
    else:
        NatsCluster(nodes).start()
    records = []
    for replica, (node, running) in enumerate(zip(nodes, was_running, strict=True)):
        record = _server_record("nats", node.ref, node.url, node.port, str(node.log_file))
        record.replica = replica
        record.monitor_port = node.monitor_port
        record.route_port = node.cluster.port if node.cluster else None
        label = "nats" if len(nodes) == 1 else f"nats-{replica}"
        verb = "running" if running else "started"
        say(
            f"{verb} {label:<11} pid {record.pid:<8} {node.url} "
            f"(sync_interval {node.sync_interval})"
        )
        records.append(record)
    return records


def _database_name(settings: StackSettings, nats_nodes: int | None) -> str:
    """The read models' database for this NATS layout. Each layout keeps its own streams
    (``.chiffon/nats`` or ``.chiffon/nats-<i>``), so each has its own read models too:
    projections checkpointed at one layout's stream positions would skip the other's
    first events, and list runs that its streams do not hold."""
    if nats_nodes is None or nats_nodes == 1:
        return settings.database_name
    return f"{settings.database_name}_nats{nats_nodes}"


def _start_postgres(
    settings: StackSettings, postgres: PostgresServer | None, say: Say, database_name: str
) -> tuple[ProcessRecord, str]:
    if postgres is None:
        assert settings.database_url is not None
        url = settings.database_url.get_secret_value()
        say("PostgreSQL  external   (CHIFFON_DATABASE_URL)")
        return _external_record("postgres", _hide_password(url)), url
    was_running = postgres.running()
    postgres.start()
    url = postgres.dsn_for(database_name, driver="postgresql+asyncpg")
    record = _server_record(
        "postgres",
        postgres.ref,
        postgres.dsn_for(database_name),
        postgres.port,
        str(postgres.log_file),
    )
    verb = "running" if was_running else "started"
    say(f"{verb} postgres    pid {record.pid:<8} {record.url}")
    return record, url


def _hide_password(url: str) -> str:
    from chiffon.core.settings import mask_url

    return mask_url(url)


def _print_next_steps(state: StackState, paths: StackPaths, key_source: str, say: Say) -> None:
    say("")
    say(f"Chiffon is up: {len(state.services)} services ready (data in {paths.home}).")
    say(f"  gateway     {state.gateway_url}")
    say(f"  dashboard   {state.gateway_url}/")
    say(f"  admin key   {key_source}")
    say(f"  NATS        {state.nats_url}")
    if state.postgres is not None:
        say(f"  PostgreSQL  {state.postgres.url}")
    say(f"  CLI config  {paths.cli_config}")
    say("Next: `chiffon status` to check health, `chiffon logs [NAME] -f` to follow logs,")
    say("      `chiffon down` to stop everything (data is kept).")
    say("      (chiffon is .venv/bin/chiffon; ./taskw status | logs | down work too.)")


# -- down ---------------------------------------------------------------------------


def down(settings: StackSettings, say: Say) -> int:
    """Stop every service, then PostgreSQL, then NATS. Returns how many were stopped."""
    paths = settings.paths
    with _locked(paths):
        state = load_state(paths.state_file)
        stopped = 0
        graceful, killed = supervisor.stop(state.services if state else [], settings.stop_timeout)
        for record in graceful:
            say(f"stopped {record.label:<11} pid {record.pid}")
        for record in killed:
            say(
                f"killed  {record.label:<11} pid {record.pid} (no exit {settings.stop_timeout:.0f}s after SIGTERM)"
            )
        stopped += len(graceful) + len(killed)
        # The servers are found by their data folders, so they stop even if stack.json
        # is lost; an external server is never ours to stop.
        postgres = postgres_server(settings, state)
        pid = postgres.pid
        try:
            if postgres.stop():
                say(f"stopped postgres    pid {pid}")
                stopped += 1
        except ServerError as error:
            raise StackError(f"error: {error}") from None
        for number, nats in sorted(_running_nats(paths).items()):
            pid = nats.pid
            if nats.stop():
                label = "nats" if number < 0 else f"nats-{number}"
                say(f"stopped {label:<11} pid {pid}")
                stopped += 1
        paths.state_file.unlink(missing_ok=True)
    if stopped == 0:
        say("Chiffon is not running; nothing to stop.")
    else:
        say(f"Chiffon is down ({stopped} processes stopped; data kept in {paths.home}).")
    return stopped


# -- status -------------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    replica: int
    pid: int | None
    healthy: bool
    url: str
    hooks_url: str | None = None  # the trigger service's: where webhooks are posted

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {
            "name": self.name,
            "replica": self.replica,
            "pid": self.pid,
            "healthy": self.healthy,
            "url": self.url,
        }
        if self.hooks_url is not None:
            found["hooks_url"] = self.hooks_url
        return found


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.port) and accepts_connections(
        parts.port or 0, parts.hostname or "127.0.0.1", 2.0
    )


def status(settings: StackSettings) -> list[Entry]:
    """Every recorded process with its health (servers first). Empty: not running."""
    state = load_state(settings.paths.state_file)
    if state is None:
        return []
    entries = []
    for nats in state.nats_nodes:
        ok = (
            _reachable(nats.url)
            if nats.external
            else (nats.alive() and _recorded_nats(settings, state, nats).healthy())
        )
        entries.append(Entry("nats", nats.replica, nats.pid, ok, nats.url))
    if state.postgres is not None:
        pg = state.postgres
        ok = (
            _reachable(pg.url)
            if pg.external
            else (pg.alive() and postgres_server(settings, state).healthy())
        )
        entries.append(Entry("postgres", 0, pg.pid, ok, pg.url))
    for record, ok in zip(state.services, supervisor.check_all(state.services), strict=True):
        hooks = f"{record.url.rstrip('/')}/hooks/" if record.name == "trigger" else None
        entries.append(Entry(record.name, record.replica, record.pid, ok, record.url, hooks))
    return entries
