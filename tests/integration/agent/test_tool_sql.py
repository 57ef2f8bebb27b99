"""The sql tool in a real agent process, over gRPC, against the suite's real PostgreSQL.

The agent's role owns its schema and table, so only the read-only transaction stands
between a task and a write: DROP TABLE, INSERT and a DELETE hidden in a CTE are refused
by PostgreSQL and the table is unchanged. A superuser DSN is refused on connect.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from chiffon.agentproto.v1 import agent_pb2, agent_pb2_grpc
from chiffon.devstack.servers import PostgresServer
from tests.integration.agent.conftest import AgentProcess, start_agent, stop_agent

ROWS = 120
MAX_ROWS = 50
MAX_BYTES = 4096


@dataclass
class Inventory:
    schema: str
    role: str
    admin_dsn: str
    reader_dsn: str


@pytest.fixture(scope="module")
async def inventory(postgres_server: PostgresServer) -> AsyncIterator[Inventory]:
    """A schema and a table of hosts owned by a login role of their own."""
    suffix = uuid.uuid4().hex[:10]
    schema, role = f"sqltool_{suffix}", f"sqltool_reader_{suffix}"
    admin = await asyncpg.connect(postgres_server.dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
        await admin.execute(f"ALTER ROLE {role} SET search_path = {schema}")
        await admin.execute(f"SET ROLE {role}")
        await admin.execute(
            f"""CREATE TABLE {schema}.hosts (
                id serial PRIMARY KEY, name text NOT NULL, ram_gb numeric(6, 2),
                seen timestamptz, tags jsonb, fingerprint bytea, address inet)"""
        )
        await admin.executemany(
            f"""INSERT INTO {schema}.hosts (name, ram_gb, seen, tags, fingerprint, address)
                VALUES ($1, $2, '2026-01-02T03:04:05Z', $3::jsonb, '\\x00ff', '192.168.1.10')""",
            [(f"host-{n:03}", n + 0.5, json.dumps({"rack": n % 3})) for n in range(ROWS)],
        )
        await admin.execute("RESET ROLE")
        reader = postgres_server.dsn.replace(f"{postgres_server.superuser}@", f"{role}@", 1)
        yield Inventory(schema, role, postgres_server.dsn, reader)
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, inventory: Inventory) -> Iterator[AgentProcess]:
    databases = {"inventory": inventory.reader_dsn, "admin": inventory.admin_dsn}
    running = start_agent(
        tmp_path_factory.mktemp("sql"),
        CHIFFON_AGENT_CAPABILITIES="shell,sql",
        CHIFFON_AGENT_SQL_DATABASES=json.dumps(databases),
        CHIFFON_AGENT_SQL_MAX_ROWS=str(MAX_ROWS),
        CHIFFON_AGENT_SQL_MAX_BYTES=str(MAX_BYTES),
    )
    yield running
    stop_agent(running)


@pytest.fixture
async def sql(agent: AgentProcess) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)

        async def call(
            query: str, database: str = "inventory", timeout: float = 0.0, **extra: Any
        ) -> agent_pb2.TaskResult:
            task_id = f"sql-test:{uuid.uuid4().hex}"
            arguments = struct_pb2.Struct()
            arguments.update({"database": database, "query": query, **extra})
            request = agent_pb2.ExecuteRequest(
                task_id=task_id, tool="sql", arguments=arguments, timeout_seconds=timeout
            )
            async for update in stub.Execute(request, metadata=agent.token(task_id), timeout=30):
                if update.WhichOneof("update") == "result":
                    return update.result
            raise AssertionError("the stream ended without a result")

        yield call


def _output(result: agent_pb2.TaskResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output)


async def _rows_left(inventory: Inventory) -> int:
    admin = await asyncpg.connect(inventory.admin_dsn)
    try:
        return int(await admin.fetchval(f"SELECT count(*) FROM {inventory.schema}.hosts"))
    finally:
        await admin.close()


async def _still_serving(sql: Any) -> None:
    result = await sql("SELECT count(*) AS hosts FROM hosts")
    assert result.ok, result
    assert _output(result)["rows"] == [[float(ROWS)]]


async def test_a_select_answers_json_ready_rows(sql: Any) -> None:
    result = await sql(
        "SELECT name, ram_gb, seen, tags, fingerprint, address FROM hosts WHERE id = $1",
        params=[2],
    )
    assert result.ok, result
    output = _output(result)
    assert [column["name"] for column in output["columns"]] == [
        "name",
        "ram_gb",
        "seen",
        "tags",
        "fingerprint",
        "address",
    ]
    assert output["columns"][1]["type"] == "numeric"
    assert output["rows"] == [
        ["host-001", "1.50", "2026-01-02T03:04:05+00:00", {"rack": 1.0}, "AP8=", "192.168.1.10"]
    ]
    assert output["row_count"] == 1.0 and output["truncated"] is False


async def test_rows_past_the_cap_are_cut_and_said_to_be(sql: Any) -> None:
    everything = _output(await sql("SELECT id FROM hosts ORDER BY id"))
    assert everything["row_count"] == MAX_ROWS and everything["truncated"] is True
    assert everything["rows"][-1] == [float(MAX_ROWS)]
    exactly = _output(await sql(f"SELECT id FROM hosts ORDER BY id LIMIT {MAX_ROWS}"))
    assert exactly["row_count"] == MAX_ROWS and exactly["truncated"] is False


async def test_rows_past_the_byte_cap_are_cut_and_a_row_alone_over_it_refused(sql: Any) -> None:
    wide = _output(await sql("SELECT repeat('x', 1000) AS text FROM hosts"))
    assert wide["truncated"] is True
    assert wide["row_count"] == 4.0  # [4 rows of 1,004 bytes] is 4,021 bytes of JSON
    huge = await sql(f"SELECT repeat('x', {MAX_BYTES})")
    assert huge.error_type == "limit_exceeded"
    assert huge.error_message == f"the first row alone is over the {MAX_BYTES}-byte cap"


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("DROP TABLE hosts", "cannot execute DROP TABLE in a read-only transaction"),
        ("INSERT INTO hosts (name) VALUES ('evil')", "cannot execute INSERT in a read-only"),
        ("UPDATE hosts SET name = 'evil'", "cannot execute UPDATE in a read-only transaction"),
        (
            "WITH gone AS (DELETE FROM hosts RETURNING id) SELECT count(*) FROM gone",
            "cannot execute SELECT in a read-only transaction",
        ),
        ("SELECT nextval('hosts_id_seq')", "cannot execute nextval() in a read-only"),
        ("SET TRANSACTION READ WRITE", "read-write mode must be set before any query"),
    ],
)
async def test_writes_are_refused_by_the_database_and_change_nothing(
    sql: Any, inventory: Inventory, query: str, refused: str
) -> None:
    result = await sql(query)
    assert not result.ok and result.error_type == "forbidden", result
    assert refused in result.error_message
    assert await _rows_left(inventory) == ROWS
    await _still_serving(sql)


async def test_a_second_statement_is_refused_by_the_protocol(
    sql: Any, inventory: Inventory
) -> None:
    result = await sql("SELECT 1; DROP TABLE hosts")
    assert result.error_type == "invalid_arguments"
    assert "cannot insert multiple commands into a prepared statement" in result.error_message
    assert await _rows_left(inventory) == ROWS


async def test_a_query_past_its_time_is_stopped_and_the_agent_serves_on(sql: Any) -> None:
    result = await sql("SELECT pg_sleep(30)", timeout=0.5)
    assert (result.error_type, result.error_message) == (
        "timeout",
        "the query ran past 0.5 s",
    )
    await _still_serving(sql)


async def test_an_advisory_lock_does_not_outlive_its_task(sql: Any, inventory: Inventory) -> None:
    taken = await sql("SELECT pg_advisory_lock(4242)")
    assert taken.ok, taken
    admin = await asyncpg.connect(inventory.admin_dsn)
    try:
        assert await admin.fetchval("SELECT pg_try_advisory_lock(4242)") is True
    finally:
        await admin.close()


async def test_a_superuser_dsn_is_refused_on_connect(sql: Any) -> None:
    result = await sql("SELECT 1", database="admin")
    assert result.error_type == "forbidden"
    assert result.error_message.startswith("the database role 'postgres' is or may become")
    assert "CHIFFON_AGENT_SQL_ALLOW_PRIVILEGED_ROLE" in result.error_message
    await _still_serving(sql)


async def test_malformed_tasks_are_refused_as_invalid(sql: Any) -> None:
    unknown = await sql("SELECT 1", database="billing")
    assert unknown.error_type == "invalid_arguments"
    assert (
        unknown.error_message == "unknown database 'billing'; this agent has ['admin', 'inventory']"
    )
    typo = await sql("SELEC name FROM hosts")
    assert typo.error_type == "invalid_arguments" and typo.error_message.startswith("42601")
    missing = await sql("SELECT name FROM hosts WHERE id = $1")
    assert missing.error_type == "invalid_arguments"
    assert "the server expects 1 argument" in missing.error_message
