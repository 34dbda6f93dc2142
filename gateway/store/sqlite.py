"""The embedded store: one SQLite file in WAL mode, versioned migrations at open.

Writes and large reads go through aiosqlite's thread. Point reads (one row by
key, or one short page) run on the event loop's own thread through a second,
read-only connection: SQLite answers them in a few microseconds, far less than
the hop to aiosqlite's thread and back (~60 µs and two wake-ups). In WAL mode a
reader never waits for a writer, so these reads never block on another write.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from gateway.store.base import BatchRecord, FileRecord, Page, UnknownCursor

_FILE_COLS = (
    "id, tenant, purpose, filename, bytes, created_at, expires_at, sha256, line_count,"
    " endpoint, models, blob, provider, upstream_id, batch_id"
)
_BATCH_COLS = (
    "id, tenant, provider, input_file_id, created_at, object, upstream_id, pending, output_ttl"
)
# Pages up to this many rows are read on the loop's thread; longer ones on aiosqlite's.
_INLINE_ROWS = 101
# How many batches' last known rows are kept to skip writes that change nothing.
_SEEN_MAX = 4096


def migrations() -> list[tuple[int, str]]:
    """(version, sql) for every file in migrations/, in order."""
    found = []
    for entry in resources.files("gateway.store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _file(row: Any) -> FileRecord:
    return FileRecord(
        id=row[0],
        tenant=row[1],
        purpose=row[2],
        filename=row[3],
        bytes=row[4],
        created_at=row[5],
        expires_at=row[6],
        sha256=row[7],
        line_count=row[8],
        endpoint=row[9],
        models=tuple(orjson.loads(row[10])),
        blob=row[11],
        provider=row[12],
        upstream_id=row[13],
        batch_id=row[14],
    )


def _open_reader(path: str) -> sqlite3.Connection:
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("PRAGMA query_only=1")
    reader.execute("PRAGMA busy_timeout=1000")
    return reader


def _batch(row: Any) -> BatchRecord:
    return BatchRecord(
        id=row[0],
        tenant=row[1],
        provider=row[2],
        input_file_id=row[3],
        created_at=row[4],
        object=orjson.loads(row[5]),
        upstream_id=row[6],
        pending=bool(row[7]),
        output_ttl=row[8],
    )


class SQLiteStore:
    def __init__(self, db: aiosqlite.Connection, reader: sqlite3.Connection | None = None) -> None:
        self._db = db
        self._reader = reader
        # batch id -> (object JSON, upstream_id, pending) as last read or written here.
        self._seen: dict[str, tuple[str, str | None, int]] = {}

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA busy_timeout=5000")
        store = cls(db)
        await store.migrate()
        if path != ":memory:":  # a second connection to ":memory:" would be another database
            store._reader = _open_reader(path)
        return store

    async def migrate(self) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " applied_at INTEGER NOT NULL DEFAULT (unixepoch()))"
        )
        async with self._db.execute("SELECT version FROM schema_migrations") as cur:
            applied = {row[0] for row in await cur.fetchall()}
        for version, sql in migrations():
            if version in applied:
                continue
            # executescript would commit implicitly; run statement by statement in one transaction.
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, sql.split(";")):
                    await self._db.execute(statement)
                await self._db.execute(
                    "INSERT INTO schema_migrations (version) VALUES (?)", (version,)
                )
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        async with self._db.execute("SELECT max(version) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        return int(row[0] or 0) if row else 0

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        await self._db.close()

    async def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        """The one row a key lookup finds, or None."""
        rows: Iterable[Any]
        if self._reader is not None:
            # fetchall steps to the end, so the read transaction ends here and
            # the next read sees every commit made since.
            rows = self._reader.execute(sql, args).fetchall()
        else:
            rows = await self._db.execute_fetchall(sql, args)
        return next(iter(rows), None)

    async def _page(self, sql: str, args: tuple[Any, ...], limit: int) -> list[Any]:
        if self._reader is not None and limit <= _INLINE_ROWS:
            return self._reader.execute(sql, args).fetchall()
        return list(await self._db.execute_fetchall(sql, args))

    def _record(self, row: Any) -> BatchRecord:
        self._remember(row[0], (row[5], row[6], int(row[7])))
        return _batch(row)

    def _remember(self, batch_id: str, state: tuple[str, str | None, int]) -> None:
        if batch_id not in self._seen and len(self._seen) >= _SEEN_MAX:
            del self._seen[next(iter(self._seen))]
        self._seen[batch_id] = state

    # files

    async def insert_file(self, record: FileRecord) -> None:
        await self._db.execute(
            f"INSERT INTO files ({_FILE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.id,
                record.tenant,
                record.purpose,
                record.filename,
                record.bytes,
                record.created_at,
                record.expires_at,
                record.sha256,
                record.line_count,
                record.endpoint,
                orjson.dumps(list(record.models)).decode(),
                record.blob,
                record.provider,
                record.upstream_id,
                record.batch_id,
            ),
        )

    async def get_file(self, file_id: str, tenant: str | None = None) -> FileRecord | None:
        sql = f"SELECT {_FILE_COLS} FROM files WHERE id = ?"
        args: tuple[Any, ...] = (file_id,)
        if tenant is not None:
            sql += " AND tenant = ?"
            args += (tenant,)
        row = await self._one(sql, args)
        return _file(row) if row else None

    async def find_file_by_upstream(self, provider: str, upstream_id: str) -> FileRecord | None:
        row = await self._one(
            f"SELECT {_FILE_COLS} FROM files WHERE provider = ? AND upstream_id = ?",
            (provider, upstream_id),
        )
        return _file(row) if row else None

    async def list_files(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]:
        where, args = "tenant = ?", list[Any]([tenant])
        if purpose:
            where += " AND purpose = ?"
            args.append(purpose)
        desc = order == "desc"
        if after is not None:
            seq = await self._seq("files", after, tenant)
            where += " AND seq < ?" if desc else " AND seq > ?"
            args.append(seq)
        sql = (
            f"SELECT {_FILE_COLS} FROM files WHERE {where}"
            f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?"
        )
        rows = await self._page(sql, (*args, limit + 1), limit + 1)
        return Page([_file(r) for r in rows[:limit]], len(rows) > limit)

    async def delete_file(self, file_id: str) -> None:
        await self._db.execute("BEGIN IMMEDIATE")
        await self._db.execute("DELETE FROM upstream_files WHERE file_id = ?", (file_id,))
        await self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        await self._db.execute("COMMIT")

    async def get_upstream_file(self, file_id: str, provider: str) -> str | None:
        row = await self._one(
            "SELECT upstream_id FROM upstream_files WHERE file_id = ? AND provider = ?",
            (file_id, provider),
        )
        return str(row[0]) if row else None

    async def put_upstream_file(self, file_id: str, provider: str, upstream_id: str) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO upstream_files (file_id, provider, upstream_id) VALUES (?,?,?)",
            (file_id, provider, upstream_id),
        )

    # batches

    async def insert_batch(self, record: BatchRecord) -> None:
        state = (orjson.dumps(record.object).decode(), record.upstream_id, int(record.pending))
        await self._db.execute(
            f"INSERT INTO batches ({_BATCH_COLS}, status) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                record.id,
                record.tenant,
                record.provider,
                record.input_file_id,
                record.created_at,
                state[0],
                record.upstream_id,
                state[2],
                record.output_ttl,
                record.status,
            ),
        )
        self._remember(record.id, state)

    async def update_batch(self, record: BatchRecord) -> None:
        state = (orjson.dumps(record.object).decode(), record.upstream_id, int(record.pending))
        # Most refreshes of a running batch change nothing; such a write would
        # only cost a commit. Every read of a batch row refreshes `_seen`, so the
        # comparison is with the row this request started from.
        if self._seen.get(record.id) == state:
            return
        await self._db.execute(
            "UPDATE batches SET object = ?, upstream_id = ?, pending = ?, status = ? WHERE id = ?",
            (state[0], record.upstream_id, state[2], record.status, record.id),
        )
        self._remember(record.id, state)

    async def delete_batch(self, batch_id: str) -> None:
        self._seen.pop(batch_id, None)
        await self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> BatchRecord | None:
        sql = f"SELECT {_BATCH_COLS} FROM batches WHERE id = ?"
        args: tuple[Any, ...] = (batch_id,)
        if tenant is not None:
            sql += " AND tenant = ?"
            args += (tenant,)
        row = await self._one(sql, args)
        return self._record(row) if row else None

    async def list_batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        where, args = "tenant = ?", list[Any]([tenant])
        if after is not None:
            where += " AND seq < ?"
            args.append(await self._seq("batches", after, tenant))
        sql = f"SELECT {_BATCH_COLS} FROM batches WHERE {where} ORDER BY seq DESC LIMIT ?"
        rows = await self._page(sql, (*args, limit + 1), limit + 1)
        return Page([self._record(r) for r in rows[:limit]], len(rows) > limit)

    async def pending_batches(self) -> list[BatchRecord]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_BATCH_COLS} FROM batches WHERE pending = 1 ORDER BY seq"
        )
        return [self._record(r) for r in rows]

    async def active_batches(self) -> list[BatchRecord]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_BATCH_COLS} FROM batches WHERE status NOT IN"
            " ('completed', 'failed', 'expired', 'cancelled') AND pending = 0 ORDER BY seq"
        )
        return [self._record(r) for r in rows]

    async def _seq(self, table: str, object_id: str, tenant: str) -> int:
        row = await self._one(
            f"SELECT seq FROM {table} WHERE id = ? AND tenant = ?", (object_id, tenant)
        )
        if row is None:
            raise UnknownCursor(object_id)
        return int(row[0])
