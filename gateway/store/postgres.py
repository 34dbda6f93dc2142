"""The shared store: PostgreSQL through an asyncpg pool, for several replicas.

Everything but connection handling comes from `SQLStore`; this module numbers
`?` placeholders as `$n` and serializes migrations across replicas with an
advisory lock held for the length of each migration's transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway.store.migrate import Executor, Row
from gateway.store.sql import SQLStore

# Any constant works, as long as nothing else in the database uses it.
MIGRATION_LOCK = 0x62_61_74_63_68_67_77  # "batchgw"
COMMAND_TIMEOUT = 30.0


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (our SQL has no `?` elsewhere)."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], 1):
        out.append(f"${i}{part}")
    return "".join(out)


class _PGExecutor:
    def __init__(self, conn: PoolConnectionProxy[Any]) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(numbered(sql), *args))

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(numbered(sql), *args)

    async def script(self, sql: str) -> None:
        # Without arguments asyncpg uses the simple query protocol: many statements at once.
        await self._conn.execute(sql)


class PostgresStore(SQLStore):
    dialect = "postgres"
    row_lock = "FOR UPDATE SKIP LOCKED"

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, *, schema_upto: int | None = None, pool_size: int = 10
    ) -> PostgresStore:
        """Connect a pool and migrate; `schema_upto` stops at a version."""
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=pool_size, command_timeout=COMMAND_TIMEOUT
        )
        store = cls(pool)
        try:
            await store.migrate(schema_upto)
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Executor]:
        async with self._pool.acquire() as conn:
            yield _PGExecutor(conn)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Executor]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PGExecutor(conn)

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[Executor]:
        async with self._tx() as db:
            # Released at commit/rollback: replicas starting together take turns.
            await db.execute("SELECT pg_advisory_xact_lock(?)", MIGRATION_LOCK)
            yield db
