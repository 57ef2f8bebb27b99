"""The sql tool: queries in a read-only transaction against a configured database.

`{tool: sql, database: NAME, query: "...", params: [...]}` answers
`{columns: [{name, type}], rows: [[...]], row_count, truncated}`.

The database is the fence, not a pattern over the query:
- one statement, prepared (the extended protocol refuses `SELECT 1; DROP TABLE x`);
- inside `BEGIN READ ONLY`, whose first query sets the statement timeout (a query takes
  the snapshot, so the task's statement cannot turn the transaction read-write), always
  rolled back: a write, even one hidden in a CTE, is refused by PostgreSQL (SQLSTATE
  25006) and answered `forbidden`;
- rows read through a cursor up to `CHIFFON_AGENT_SQL_MAX_ROWS` (+1 to know there are
  more: `truncated`) and `CHIFFON_AGENT_SQL_MAX_BYTES` of JSON;
- the shorter of `CHIFFON_AGENT_SQL_TIMEOUT_SECONDS` and the task's timeout, as
  `statement_timeout` on the server and as a bound here (`timeout`).

What a read-only transaction does not stop: functions with effects outside it
(pg_terminate_backend, pg_cancel_backend, dblink to another connection, advisory locks,
COPY ... TO PROGRAM, which ran a program from a read-only transaction in our test, for
a superuser or pg_execute_server_program). So the DSN should name a least-privilege
role, and a role that is, or may become, a superuser or a member of the server
file/program roles is refused on connect unless `CHIFFON_AGENT_SQL_ALLOW_PRIVILEGED_ROLE`
says otherwise. Advisory locks and session settings die with the pool's reset of the
connection after each task.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncpg

from chiffon.agent.tools.base import (
    FORBIDDEN,
    INVALID_ARGUMENTS,
    LIMIT_EXCEEDED,
    TIMEOUT,
    Tool,
    ToolContext,
    ToolRefused,
    ToolResult,
)
from chiffon.agent.tools.sql_values import from_json, to_json

if TYPE_CHECKING:
    from chiffon.agent.settings import AgentSettings

ARGUMENTS = frozenset({"database", "query", "params"})
MAX_QUERY_CHARS = 100_000
MAX_PARAMS = 10_000
FETCH_BATCH = 100  # rows per cursor fetch: the byte cap is checked between fetches
#: Grace after the server's statement_timeout before the tool gives up on the answer.
CLIENT_GRACE_SECONDS = 1.0
PRIVILEGED_ROLES = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files")
_PRIVILEGED = """
SELECT array_agg(r.rolname::text ORDER BY r.rolname) FROM pg_roles r
WHERE (r.rolsuper OR r.rolname = ANY($1::text[]))
  AND pg_has_role(session_user, r.oid, 'MEMBER')
"""


class PrivilegedRole(Exception):
    """The DSN's role could step outside a read-only transaction."""


class _Cancelled(Exception):
    pass


def _refuse(message: str) -> ToolRefused:
    return ToolRefused(INVALID_ARGUMENTS, message)


class SqlTool:
    name = "sql"

    def __init__(
        self,
        *,
        databases: Mapping[str, str],
        max_rows: int,
        max_bytes: int,
        timeout: float,
        allow_privileged_role: bool = False,
        max_connections: int = 4,
    ) -> None:
        self._dsns = dict(databases)
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._allow_privileged = allow_privileged_role
        self._max_connections = max_connections
        self._pools: dict[str, asyncpg.Pool] = {}
        self._opening = asyncio.Lock()

    def _parse(self, arguments: Mapping[str, Any]) -> tuple[str, str, list[Any]]:
        unknown = sorted(set(arguments) - ARGUMENTS)
        if unknown:
            raise _refuse(f"unknown argument(s) {unknown}; the sql tool takes {sorted(ARGUMENTS)}")
        database = arguments.get("database")
        if not isinstance(database, str) or database not in self._dsns:
            known = sorted(self._dsns) or "none"
            raise _refuse(f"unknown database {database!r}; this agent has {known}")
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY_CHARS:
            raise _refuse(f"query must be a text of 1 to {MAX_QUERY_CHARS} characters")
        params = arguments.get("params") or []
        if not isinstance(params, list) or len(params) > MAX_PARAMS:
            raise _refuse(f"params must be a list of at most {MAX_PARAMS} values")
        return database, query, [from_json(param) for param in params]

    async def run(self, arguments: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        database, query, params = self._parse(arguments)
        budget = min(self._timeout, ctx.timeout)
        started = time.monotonic()
        work = asyncio.ensure_future(self._query(database, query, params, budget))
        waited: list[asyncio.Future[Any]] = [work, ctx.cancelled]
        try:
            await asyncio.wait(
                waited, timeout=budget + CLIENT_GRACE_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if not work.done() or work.cancelled():
            if ctx.cancelled.done():
                return ToolResult.failed("cancelled", "the task was cancelled")
            raise ToolRefused(TIMEOUT, f"the query ran past {budget:g} s")
        try:
            output = work.result()
        except PrivilegedRole as refused:
            raise ToolRefused(FORBIDDEN, str(refused)) from None
        except asyncpg.PostgresError as error:
            return _database_error(error, budget)
        except (TimeoutError, OSError, asyncpg.InterfaceError) as error:
            # Retryable: the database is down, restarting, or out of connections.
            return ToolResult.failed("connection_error", f"{type(error).__name__}: {error}")
        return ToolResult(ok=True, output=output, duration_ms=(time.monotonic() - started) * 1000)

    async def _pool(self, database: str) -> asyncpg.Pool:
        pool = self._pools.get(database)
        if pool is not None:
            return pool
        async with self._opening:
            pool = self._pools.get(database)
            if pool is None:
                # min_size 0: an agent starts (and stays up) while a database is down.
                pool = await asyncpg.create_pool(
                    self._dsns[database],
                    min_size=0,
                    max_size=self._max_connections,
                    init=self._on_connect,
                    max_inactive_connection_lifetime=60.0,
                )
                self._pools[database] = pool
        return pool

    async def _on_connect(self, connection: asyncpg.Connection) -> None:
        for kind in ("json", "jsonb"):
            await connection.set_type_codec(
                kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
        if self._allow_privileged:
            return
        roles = await connection.fetchval(_PRIVILEGED, list(PRIVILEGED_ROLES))
        if roles:
            user = await connection.fetchval("SELECT session_user::text")
            raise PrivilegedRole(
                f"the database role {user!r} is or may become {', '.join(roles)}, which a "
                "read-only transaction does not fence (COPY TO PROGRAM, server files); "
                "give the sql tool a least-privilege role, or set "
                "CHIFFON_AGENT_SQL_ALLOW_PRIVILEGED_ROLE=true"
            )

    async def _query(
        self, database: str, query: str, params: list[Any], budget: float
    ) -> dict[str, Any]:
        pool = await self._pool(database)
        connection = await pool.acquire(timeout=budget)
        clean = False
        try:
            await connection.execute("BEGIN READ ONLY")
            # A SELECT, not SET: it takes the transaction's snapshot, after which no
            # statement can make the transaction read-write.
            await connection.fetchval(
                "SELECT set_config('statement_timeout', $1, true)", str(max(int(budget * 1000), 1))
            )
            output = await self._read(connection, query, params)
            clean = True
            return output
        except (asyncpg.PostgresError, ToolRefused):
            clean = True  # an answer, if an error: the connection is in a known state
            raise
        finally:
            await _end(connection, clean)
            await pool.release(connection)

    async def _read(
        self, connection: asyncpg.Connection, query: str, params: list[Any]
    ) -> dict[str, Any]:
        statement = await connection.prepare(query)
        columns = [
            {"name": attribute.name, "type": attribute.type.name}
            for attribute in statement.get_attributes()
        ]
        try:
            cursor = await statement.cursor(*params)
        except (asyncpg.DataError, asyncpg.InterfaceError) as error:
            raise _refuse(f"params: {error}") from None
        rows: list[list[Any]] = []
        size = 2  # the JSON of `rows`: its brackets, its rows, their commas
        truncated = False
        while not truncated:
            asked = min(FETCH_BATCH, self._max_rows + 1 - len(rows))
            batch = [
                [to_json(value) for value in record.values()]
                for record in await cursor.fetch(asked)
            ]
            # One dumps per batch, per row only in the batch that crosses a cap: a dumps per
            # row took 12 of the 60 ms a 1,000-row answer cost.
            grown = size + len(_json(batch)) - 2 + (1 if rows and batch else 0)
            if grown <= self._max_bytes and len(rows) + len(batch) <= self._max_rows:
                rows.extend(batch)
                size = grown
            else:
                for row in batch:
                    size += len(_json(row)) + (1 if rows else 0)
                    if len(rows) == self._max_rows or size > self._max_bytes:
                        truncated = True
                        break
                    rows.append(row)
            if len(batch) < asked:
                break
        if truncated and not rows:
            raise ToolRefused(
                LIMIT_EXCEEDED, f"the first row alone is over the {self._max_bytes}-byte cap"
            )
        return {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated}

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _end(connection: asyncpg.Connection, clean: bool) -> None:
    """Roll back; a connection cut off mid-query (a timeout, a cancel) is closed instead,
    since its state is unknown."""
    if clean:
        try:
            await connection.execute("ROLLBACK")
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pass
    connection.terminate()


def _database_error(error: asyncpg.PostgresError, budget: float) -> ToolResult:
    state = str(error.sqlstate or "")
    message = f"{state}: {error}"
    if state == "25006":  # read_only_sql_transaction
        raise ToolRefused(FORBIDDEN, f"the database refused a write: {error}")
    if state == "25001":  # active_sql_transaction: SET TRANSACTION READ WRITE, too late
        raise ToolRefused(FORBIDDEN, message)
    if state == "42501" or state.startswith("28"):  # insufficient privilege, authorization
        raise ToolRefused(FORBIDDEN, message)
    if state == "57014":  # query_canceled: our statement_timeout
        raise ToolRefused(TIMEOUT, f"the query ran past {budget:g} s")
    if state.startswith("54"):  # program_limit_exceeded
        raise ToolRefused(LIMIT_EXCEEDED, message)
    if state[:2] in ("0A", "21", "22", "26", "34", "42"):
        # Syntax, unknown names, types, data: the same query would fail again.
        raise ToolRefused(INVALID_ARGUMENTS, message)
    return ToolResult.failed("database_error", message)


def build(settings: AgentSettings) -> Tool | None:
    """The sql tool for these settings."""
    return SqlTool(
        databases=settings.agent_sql_databases,
        max_rows=settings.agent_sql_max_rows,
        max_bytes=settings.agent_sql_max_bytes,
        timeout=settings.agent_sql_timeout_seconds,
        allow_privileged_role=settings.agent_sql_allow_privileged_role,
        max_connections=min(settings.agent_max_concurrency, 10),
    )
