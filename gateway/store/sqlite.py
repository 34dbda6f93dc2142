"""The embedded store: one SQLite file in WAL mode, versioned migrations at open."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from gateway.store.base import BatchRecord, FileRecord, Page, UnknownCursor, WebhookDelivery

_FILE_COLS = (
    "id, tenant, purpose, filename, bytes, created_at, expires_at, sha256, line_count,"
    " endpoint, models, blob, provider, upstream_id, batch_id"
)
_ACTIVE = "status NOT IN ('completed', 'failed', 'expired', 'cancelled')"
_BATCH_COLS = (
    "id, tenant, provider, input_file_id, created_at, object, upstream_id, pending, output_ttl,"
    " webhook"
)


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
        webhook=row[9],
    )


class SQLiteStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA busy_timeout=5000")  # first: other processes may hold locks
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        store = cls(db)
        try:
            await store.migrate()
        except BaseException:
            await db.close()  # an open connection's thread would keep the process alive
            raise
        return store

    async def migrate(self) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " applied_at INTEGER NOT NULL DEFAULT (unixepoch()))"
        )
        # One write transaction, and what is applied is read inside it: several processes
        # starting at once (`serve --workers N`) then migrate exactly once.
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            async with self._db.execute("SELECT version FROM schema_migrations") as cur:
                applied = {row[0] for row in await cur.fetchall()}
            for version, sql in migrations():
                if version in applied:
                    continue
                # executescript would commit implicitly: run statement by statement.
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
        await self._db.close()

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
        async with self._db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return _file(row) if row else None

    async def find_file_by_upstream(self, provider: str, upstream_id: str) -> FileRecord | None:
        async with self._db.execute(
            f"SELECT {_FILE_COLS} FROM files WHERE provider = ? AND upstream_id = ?",
            (provider, upstream_id),
        ) as cur:
            row = await cur.fetchone()
        return _file(row) if row else None

    async def list_files(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]:
        # Expired files are gone for clients even before the sweeper removes them.
        where = "tenant = ? AND (expires_at IS NULL OR expires_at > unixepoch())"
        args = list[Any]([tenant])
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
        async with self._db.execute(sql, (*args, limit + 1)) as cur:
            rows = list(await cur.fetchall())
        return Page([_file(r) for r in rows[:limit]], len(rows) > limit)

    async def delete_file(self, file_id: str) -> None:
        await self._db.execute("BEGIN IMMEDIATE")
        await self._db.execute("DELETE FROM upstream_files WHERE file_id = ?", (file_id,))
        await self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        await self._db.execute("COMMIT")

    async def get_upstream_file(self, file_id: str, provider: str) -> str | None:
        async with self._db.execute(
            "SELECT upstream_id FROM upstream_files WHERE file_id = ? AND provider = ?",
            (file_id, provider),
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def put_upstream_file(self, file_id: str, provider: str, upstream_id: str) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO upstream_files (file_id, provider, upstream_id) VALUES (?,?,?)",
            (file_id, provider, upstream_id),
        )

    async def delete_upstream_file(self, file_id: str, provider: str) -> None:
        await self._db.execute(
            "DELETE FROM upstream_files WHERE file_id = ? AND provider = ?", (file_id, provider)
        )

    # batches

    async def insert_batch(self, record: BatchRecord) -> None:
        await self._db.execute(
            f"INSERT INTO batches ({_BATCH_COLS}, status) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.id,
                record.tenant,
                record.provider,
                record.input_file_id,
                record.created_at,
                orjson.dumps(record.object).decode(),
                record.upstream_id,
                int(record.pending),
                record.output_ttl,
                record.webhook,
                record.status,
            ),
        )

    async def update_batch(self, record: BatchRecord, *, event: bytes | None = None) -> None:
        update = (
            "UPDATE batches SET object = ?, upstream_id = ?, pending = ?, status = ?, provider = ?"
            " WHERE id = ?",
            (
                orjson.dumps(record.object).decode(),
                record.upstream_id,
                int(record.pending),
                record.status,
                record.provider,
                record.id,
            ),
        )
        if event is None or record.webhook is None:
            await self._db.execute(*update)
            return
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute(*update)
            await self._db.execute(
                "INSERT INTO webhook_deliveries (batch_id, webhook, event, next_attempt_at)"
                " VALUES (?, ?, ?, ?)",
                (record.id, record.webhook, event.decode(), time.time()),
            )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    async def delete_batch(self, batch_id: str) -> None:
        await self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> BatchRecord | None:
        sql = f"SELECT {_BATCH_COLS} FROM batches WHERE id = ?"
        args: tuple[Any, ...] = (batch_id,)
        if tenant is not None:
            sql += " AND tenant = ?"
            args += (tenant,)
        async with self._db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return _batch(row) if row else None

    async def list_batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        where, args = "tenant = ?", list[Any]([tenant])
        if after is not None:
            where += " AND seq < ?"
            args.append(await self._seq("batches", after, tenant))
        sql = f"SELECT {_BATCH_COLS} FROM batches WHERE {where} ORDER BY seq DESC LIMIT ?"
        async with self._db.execute(sql, (*args, limit + 1)) as cur:
            rows = list(await cur.fetchall())
        return Page([_batch(r) for r in rows[:limit]], len(rows) > limit)

    async def pending_batches(self) -> list[BatchRecord]:
        async with self._db.execute(
            f"SELECT {_BATCH_COLS} FROM batches WHERE pending = 1 ORDER BY seq"
        ) as cur:
            return [_batch(r) for r in await cur.fetchall()]

    async def count_active_batches(self, tenant: str) -> int:
        async with self._db.execute(
            f"SELECT count(*) FROM batches WHERE tenant = ? AND {_ACTIVE}", (tenant,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def bytes_stored(self, tenant: str) -> int:
        async with self._db.execute(
            "SELECT coalesce(sum(bytes), 0) FROM files WHERE tenant = ? AND blob IS NOT NULL",
            (tenant,),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def file_in_use(self, file_id: str) -> bool:
        async with self._db.execute(
            f"SELECT 1 FROM batches WHERE input_file_id = ? AND {_ACTIVE} LIMIT 1", (file_id,)
        ) as cur:
            return await cur.fetchone() is not None

    async def expired_files(self, now: float, limit: int) -> list[FileRecord]:
        async with self._db.execute(
            f"SELECT {_FILE_COLS} FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?"
            f" AND NOT EXISTS (SELECT 1 FROM batches WHERE input_file_id = files.id AND {_ACTIVE})"
            " ORDER BY expires_at LIMIT ?",
            (now, limit),
        ) as cur:
            return [_file(r) for r in await cur.fetchall()]

    async def active_batches(self, provider: str | None = None) -> list[BatchRecord]:
        sql = f"SELECT {_BATCH_COLS} FROM batches WHERE {_ACTIVE} AND pending = 0"
        args: tuple[Any, ...] = ()
        if provider is not None:
            sql += " AND provider = ?"
            args = (provider,)
        async with self._db.execute(sql + " ORDER BY seq", args) as cur:
            return [_batch(r) for r in await cur.fetchall()]

    async def count_batches(self) -> list[tuple[str, str, int]]:
        async with self._db.execute(
            "SELECT provider, status, count(*) FROM batches WHERE pending = 0"
            " GROUP BY provider, status"
        ) as cur:
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    async def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        async with self._db.execute(
            "SELECT id, batch_id, webhook, event, attempts FROM webhook_deliveries"
            " WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (now, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [WebhookDelivery(r[0], r[1], r[2], r[3].encode(), r[4]) for r in rows]

    async def finish_delivery(
        self, delivery_id: int, *, delivered: bool, next_attempt_at: float | None, error: str | None
    ) -> None:
        state = "delivered" if delivered else "pending" if next_attempt_at is not None else "failed"
        await self._db.execute(
            "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1,"
            " next_attempt_at = coalesce(?, next_attempt_at), last_error = ? WHERE id = ?",
            (state, next_attempt_at, error, delivery_id),
        )

    async def _seq(self, table: str, object_id: str, tenant: str) -> int:
        async with self._db.execute(
            f"SELECT seq FROM {table} WHERE id = ? AND tenant = ?", (object_id, tenant)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise UnknownCursor(object_id)
        return int(row[0])
