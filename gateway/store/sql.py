"""The Store interface written once in the SQL that SQLite and PostgreSQL share.

Both backends accept the same statements here (upserts, RETURNING, partial
indexes, keyset pagination on `seq`), so a backend only supplies connections:
`_conn()` for single statements, `_tx()` for an atomic unit of work, and
`_exclusive()` for migrations. Queries use `?` placeholders; the PostgreSQL
executor numbers them; rows become records in `rows`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from gateway.instance import Instance
from gateway.store import migrate
from gateway.store.base import BatchRecord, FileRecord, Page, UnknownCursor, WebhookDelivery
from gateway.store.events import EventStore
from gateway.store.idempotency import IdempotencyStore
from gateway.store.migrate import Executor, Row
from gateway.store.provider_state import ProviderStateStore
from gateway.store.retention import RetentionStore
from gateway.store.rows import (
    BATCH_COLS,
    FILE_COLS,
    NOT_CHILDS,
    NOT_TERMINAL,
    batch_from_row,
    file_from_row,
    insert_batch_row,
    insert_file_row,
    insert_status_event,
    to_json,
)
from gateway.store.shards import ShardStore
from gateway.store.usage import UsageStore


class SQLStore(
    IdempotencyStore,
    RetentionStore,
    ProviderStateStore,
    UsageStore,
    ShardStore,
    EventStore,
    ABC,
):
    """Every Store method, over whatever connections a backend provides."""

    dialect: ClassVar[str]
    # PostgreSQL: claimers skip rows another transaction is claiming right now.
    # SQLite needs nothing: its write transaction already excludes every other.
    row_lock: ClassVar[str] = ""

    @abstractmethod
    def _conn(self) -> AbstractAsyncContextManager[Executor]:
        """A connection in autocommit mode."""

    @abstractmethod
    def _tx(self) -> AbstractAsyncContextManager[Executor]:
        """A transaction: committed on exit, rolled back on any exception."""

    def _read(self) -> AbstractAsyncContextManager[Executor]:
        """A connection for small read-only queries (a backend may make these cheaper)."""
        return self._conn()

    def _write(self) -> AbstractAsyncContextManager[Executor]:
        """A connection for one small write statement (a backend may make these cheaper)."""
        return self._conn()

    @abstractmethod
    def _exclusive(self) -> AbstractAsyncContextManager[Executor]:
        """A transaction no other process runs at the same time (for migrations)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def migrate(self, upto: int | None = None) -> list[int]:
        return await migrate.migrate(self._exclusive, self.dialect, upto)

    async def schema_version(self) -> int:
        async with self._conn() as db:
            return await migrate.schema_version(db)

    # files

    async def insert_file(self, record: FileRecord) -> str:
        async with self._write() as db:
            return await insert_file_row(db, record)

    async def get_file(self, file_id: str, tenant: str | None = None) -> FileRecord | None:
        sql = f"SELECT {FILE_COLS} FROM files WHERE id = ?"
        args: tuple[Any, ...] = (file_id,)
        if tenant is not None:
            sql += " AND tenant = ?"
            args += (tenant,)
        async with self._read() as db:
            rows = await db.fetch(sql, *args)
        return file_from_row(rows[0]) if rows else None

    async def find_file_by_upstream(self, provider: str, upstream_id: str) -> FileRecord | None:
        async with self._read() as db:
            rows = await db.fetch(
                f"SELECT {FILE_COLS} FROM files WHERE provider = ? AND upstream_id = ?",
                provider,
                upstream_id,
            )
        return file_from_row(rows[0]) if rows else None

    async def list_files(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]:
        # Expired files are gone for clients even before the sweeper removes them.
        where = f"tenant = ? AND (expires_at IS NULL OR expires_at > ?) AND {NOT_CHILDS}"
        args = list[Any]([tenant, int(time.time())])
        if purpose:
            where += " AND purpose = ?"
            args.append(purpose)
        desc = order == "desc"
        async with self._read() as db:
            if after is not None:
                where += " AND seq < ?" if desc else " AND seq > ?"
                args.append(await _seq(db, "files", after, tenant))
            rows = await db.fetch(
                f"SELECT {FILE_COLS} FROM files WHERE {where}"
                f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?",
                *args,
                limit + 1,
            )
        return Page([file_from_row(r) for r in rows[:limit]], len(rows) > limit)

    async def delete_file(self, file_id: str) -> None:
        # The file's copies at providers are queued for deletion there in the same
        # transaction: a client's delete reaches every provider, however late.
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO provider_deletions"
                " (provider, upstream_id, what, attempts, next_attempt_at, last_error)"
                " SELECT provider, upstream_id, 'input', 0, ?, NULL FROM upstream_files"
                " WHERE file_id = ? ON CONFLICT (provider, upstream_id) DO NOTHING",
                time.time(),
                file_id,
            )
            await db.execute("DELETE FROM upstream_files WHERE file_id = ?", file_id)
            await db.execute("DELETE FROM files WHERE id = ?", file_id)

    async def get_upstream_file(self, file_id: str, provider: str) -> str | None:
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT upstream_id FROM upstream_files WHERE file_id = ? AND provider = ?",
                file_id,
                provider,
            )
        return str(rows[0][0]) if rows else None

    async def put_upstream_file(self, file_id: str, provider: str, upstream_id: str) -> str:
        # Two replicas uploading one file at once: the first copy recorded is the one every
        # batch uses (the other is a duplicate for the repair sweep).
        async with self._write() as db:
            await db.execute(
                "INSERT INTO upstream_files (file_id, provider, upstream_id) VALUES (?,?,?)"
                " ON CONFLICT (file_id, provider) DO NOTHING",
                file_id,
                provider,
                upstream_id,
            )
        stored = await self.get_upstream_file(file_id, provider)
        return stored or upstream_id

    async def delete_upstream_file(self, file_id: str, provider: str) -> None:
        async with self._conn() as db:
            await db.execute(
                "DELETE FROM upstream_files WHERE file_id = ? AND provider = ?", file_id, provider
            )

    # batches

    async def insert_batch(self, record: BatchRecord) -> None:
        async with self._tx() as db:  # the row and its first status event, together
            await insert_batch_row(db, record)

    async def update_batch(self, record: BatchRecord, *, event: bytes | None = None) -> bool:
        # A terminal row is final. A writer holding an older view (a retrieve or a cancel
        # racing the poller, here or on another replica) must not move it back, nor
        # queue the webhook a second time.
        update = (
            "UPDATE batches SET object = ?, upstream_id = ?, pending = ?, status = ?, provider = ?,"
            f" owner = ?, settle_attempts = ? WHERE id = ? AND {NOT_TERMINAL}"
        )
        args = (
            to_json(record.object),
            record.upstream_id,
            record.pending,
            record.status,
            record.provider,
            record.owner,
            record.settle_attempts,
            record.id,
        )
        webhook = event is not None and record.webhook is not None
        if not webhook:
            # Most writes (polls) keep the status: one statement, and no event to record.
            async with self._write() as db:
                if await db.fetch(update + " AND status = ? RETURNING id", *args, record.status):
                    return True
        # The status changes (or may): the row is locked and read, so the status event
        # and the webhook record exactly the change this write makes.
        lock = " FOR UPDATE" if self.dialect == "postgres" else ""
        async with self._tx() as db:
            rows = await db.fetch(
                f"SELECT status FROM batches WHERE id = ? AND {NOT_TERMINAL}{lock}", record.id
            )
            if not rows or not await db.fetch(update + " RETURNING id", *args):
                return False
            if rows[0][0] != record.status:
                await insert_status_event(db, record.id, record.status)
            if webhook:
                assert event is not None
                await db.execute(
                    "INSERT INTO webhook_deliveries (batch_id, webhook, event, next_attempt_at)"
                    " VALUES (?, ?, ?, ?)",
                    record.id,
                    record.webhook,
                    event.decode(),
                    time.time(),
                )
        return True

    async def delete_batch(self, batch_id: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM batch_events WHERE batch_id = ?", batch_id)
            await db.execute("DELETE FROM batches WHERE id = ?", batch_id)

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> BatchRecord | None:
        sql = f"SELECT {BATCH_COLS} FROM batches WHERE id = ?"
        args: tuple[Any, ...] = (batch_id,)
        if tenant is not None:  # a tenant never sees a sharded batch's children
            sql += " AND tenant = ? AND parent_id IS NULL"
            args += (tenant,)
        async with self._read() as db:
            rows = await db.fetch(sql, *args)
        return batch_from_row(rows[0]) if rows else None

    async def list_batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        # A sharded batch's children are the gateway's, not the tenant's.
        where, args = "tenant = ? AND parent_id IS NULL", list[Any]([tenant])
        async with self._read() as db:
            if after is not None:
                where += " AND seq < ?"
                args.append(await _seq(db, "batches", after, tenant))
            rows = await db.fetch(
                f"SELECT {BATCH_COLS} FROM batches WHERE {where} ORDER BY seq DESC LIMIT ?",
                *args,
                limit + 1,
            )
        return Page([batch_from_row(r) for r in rows[:limit]], len(rows) > limit)

    async def pending_batches(self) -> list[BatchRecord]:
        # Pending rows are never terminal: an index of active batches finds them (no ORDER
        # BY, which would make SQLite scan the whole table in seq order instead).
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {BATCH_COLS} FROM batches WHERE {NOT_TERMINAL} AND pending"
            )
        return _oldest_first(rows)

    async def batch_of_upstream(self, provider: str, upstream_id: str) -> str | None:
        # No index: only creates of unknown outcome at untagged providers ask, rarely; an
        # index would cost every create a write.
        async with self._read() as db:
            rows = await db.fetch(
                "SELECT id FROM batches WHERE provider = ? AND upstream_id = ?",
                provider,
                upstream_id,
            )
        return str(rows[0][0]) if rows else None

    async def unowned_pending_batches(self) -> list[BatchRecord]:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {BATCH_COLS} FROM batches WHERE {NOT_TERMINAL} AND pending"
                " AND (owner IS NULL OR NOT EXISTS"
                " (SELECT 1 FROM instances WHERE instances.id = batches.owner))"
            )
        return _oldest_first(rows)

    async def count_active_batches(self, tenant: str) -> int:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT count(*) FROM batches WHERE tenant = ? AND {NOT_TERMINAL}"
                " AND parent_id IS NULL",
                tenant,
            )
        return int(rows[0][0])

    async def bytes_stored(self, tenant: str) -> int:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT coalesce(sum(bytes), 0) FROM files"
                f" WHERE tenant = ? AND purpose = 'batch' AND blob IS NOT NULL AND {NOT_CHILDS}",
                tenant,
            )
        return int(rows[0][0])  # PostgreSQL's sum() of bigint is a numeric

    async def file_in_use(self, file_id: str) -> bool:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT 1 FROM batches WHERE input_file_id = ? AND {NOT_TERMINAL} LIMIT 1",
                file_id,
            )
        return bool(rows)

    async def expired_files(self, now: float, limit: int) -> list[FileRecord]:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {FILE_COLS} FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?"
                " AND NOT EXISTS (SELECT 1 FROM batches WHERE input_file_id = files.id"
                f" AND {NOT_TERMINAL}) ORDER BY expires_at LIMIT ?",
                int(now),  # expires_at is whole seconds: <= now and <= floor(now) agree
                limit,
            )
        return [file_from_row(r) for r in rows]

    async def files_to_keep(
        self, providers: Sequence[str], after: str, now: float, limit: int
    ) -> list[FileRecord]:
        if not providers:
            return []
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {FILE_COLS} FROM files WHERE blob IS NULL AND upstream_id IS NOT NULL"
                f" AND id > ? AND provider IN ({','.join('?' * len(providers))})"
                " AND purpose = 'batch_output' AND (expires_at IS NULL OR expires_at > ?)"
                " AND EXISTS (SELECT 1 FROM batches WHERE batches.id = files.batch_id"
                f" AND NOT {NOT_TERMINAL}) ORDER BY id LIMIT ?",
                after,
                *providers,
                int(now),
                limit,
            )
        return [file_from_row(r) for r in rows]

    async def set_file_blob(self, file_id: str, blob: str, size: int) -> bool:
        async with self._conn() as db:
            rows = await db.fetch(
                "UPDATE files SET blob = ?, bytes = ? WHERE id = ? AND blob IS NULL RETURNING id",
                blob,
                size,
                file_id,
            )
        return bool(rows)

    async def active_batches(self, provider: str | None = None) -> list[BatchRecord]:
        sql = f"SELECT {BATCH_COLS} FROM batches WHERE {NOT_TERMINAL} AND NOT pending"
        args: tuple[Any, ...] = ()
        if provider is not None:
            sql += " AND provider = ?"
            args = (provider,)
        async with self._conn() as db:
            rows = await db.fetch(sql + " ORDER BY seq", *args)
        return [batch_from_row(r) for r in rows]

    async def count_batches(self) -> list[tuple[str, str, int]]:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT provider, status, count(*) FROM batches WHERE NOT pending"
                " GROUP BY provider, status"
            )
        return [(r[0], r[1], int(r[2])) for r in rows]

    # webhook deliveries

    async def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT id, batch_id, webhook, event, attempts FROM webhook_deliveries"
                " WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                float(now),
                limit,
            )
        return [WebhookDelivery(r[0], r[1], r[2], r[3].encode(), r[4]) for r in rows]

    async def finish_delivery(
        self, delivery_id: int, *, delivered: bool, next_attempt_at: float | None, error: str | None
    ) -> None:
        state = "delivered" if delivered else "pending" if next_attempt_at is not None else "failed"
        async with self._conn() as db:
            await db.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1,"
                " next_attempt_at = coalesce(?, next_attempt_at), last_error = ? WHERE id = ?",
                state,
                None if next_attempt_at is None else float(next_attempt_at),
                error,
                delivery_id,
            )

    # leases (several pollers sharing the active batches)

    async def claim_active_batches(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        now: float,
        provider: str | None = None,
    ) -> list[BatchRecord]:
        only = " AND provider = ?" if provider is not None else ""
        args: tuple[Any, ...] = (provider,) if provider is not None else ()
        async with self._tx() as db:
            rows = await db.fetch(
                "UPDATE batches SET lease_owner = ?, lease_until = ? WHERE seq IN ("
                f"SELECT seq FROM batches WHERE {NOT_TERMINAL} AND NOT pending{only}"
                " AND next_poll_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
                f" ORDER BY next_poll_at, seq LIMIT ? {self.row_lock})"
                f" RETURNING {BATCH_COLS}, next_poll_at, seq",
                owner,
                float(now + lease_seconds),
                *args,
                float(now),
                float(now),
                limit,
            )
        # RETURNING follows no ORDER BY on either backend.
        rows.sort(key=lambda r: (r[-2], r[-1]))
        return [batch_from_row(r) for r in rows]

    async def release_batch(self, batch_id: str, owner: str, next_poll_at: float) -> bool:
        async with self._write() as db:
            rows = await db.fetch(
                "UPDATE batches SET lease_owner = NULL, lease_until = NULL, next_poll_at = ?"
                " WHERE id = ? AND lease_owner = ? RETURNING seq",
                float(next_poll_at),
                batch_id,
                owner,
            )
        return bool(rows)

    async def acquire_lease(self, name: str, owner: str, seconds: float, now: float) -> bool:
        async with self._conn() as db:
            rows = await db.fetch(
                "INSERT INTO leases (name, owner, until) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until"
                " WHERE leases.owner = excluded.owner OR leases.until <= ?"
                " RETURNING owner",
                name,
                owner,
                float(now + seconds),
                float(now),
            )
        return bool(rows)

    async def release_lease(self, name: str, owner: str) -> None:
        async with self._conn() as db:
            await db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", name, owner)

    # instances (which process runs which pending create)

    async def register_instance(self, instance: Instance) -> None:
        async with self._conn() as db:
            await db.execute(
                "INSERT INTO instances (id, host, boot_id, pid, started, heartbeat_at)"
                " VALUES (?,?,?,?,?,?)",
                instance.id,
                instance.host,
                instance.boot_id,
                instance.pid,
                instance.started,
                float(instance.heartbeat_at or time.time()),
            )

    async def heartbeat(self, instance_id: str, now: float) -> bool:
        async with self._write() as db:
            rows = await db.fetch(
                "UPDATE instances SET heartbeat_at = ? WHERE id = ? RETURNING id",
                float(now),
                instance_id,
            )
        return bool(rows)

    async def instances(self) -> list[Instance]:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT id, host, boot_id, pid, started, heartbeat_at FROM instances"
            )
        return [Instance(r[0], r[1], r[2], int(r[3]), r[4], float(r[5])) for r in rows]

    async def forget_instance(self, instance_id: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM instances WHERE id = ?", instance_id)
            await db.execute("DELETE FROM leases WHERE owner = ?", instance_id)
            await db.execute(
                "UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                instance_id,
            )

    # rate windows (limits that hold across replicas)

    async def hit_rate_window(self, key: str, window_start: int, limit: int) -> tuple[bool, int]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        async with self._tx() as db:
            # One statement: the insert-or-increment is atomic on both backends, and
            # the WHERE makes a refused hit update (and so return) nothing.
            rows = await db.fetch(
                "INSERT INTO rate_windows (key, window_start, hits) VALUES (?, ?, 1)"
                " ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_windows.hits + 1"
                " WHERE rate_windows.hits < ? RETURNING hits",
                key,
                window_start,
                limit,
            )
            if rows:
                return True, int(rows[0][0])
            rows = await db.fetch(
                "SELECT hits FROM rate_windows WHERE key = ? AND window_start = ?",
                key,
                window_start,
            )
        return False, int(rows[0][0])

    async def prune_rate_windows(self, before: int) -> int:
        async with self._conn() as db:
            rows = await db.fetch(
                "DELETE FROM rate_windows WHERE window_start < ? RETURNING window_start", before
            )
        return len(rows)


def _oldest_first(rows: list[Row]) -> list[BatchRecord]:
    return sorted(map(batch_from_row, rows), key=lambda r: (r.created_at, r.id))


async def _seq(db: Executor, table: str, object_id: str, tenant: str) -> int:
    """The keyset position of a cursor id the tenant can see."""
    rows = await db.fetch(f"SELECT seq FROM {table} WHERE id = ? AND tenant = ?", object_id, tenant)
    if not rows:
        raise UnknownCursor(object_id)
    return int(rows[0][0])
