"""The embedded store: one SQLite file in WAL mode, versioned migrations at open."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.store.migrate import Executor, Row
from gateway.store.sql import SQLStore

_WAL_TRIES = 100  # x 50 ms


class _SQLiteExecutor:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    # execute_fetchall runs, fetches and closes in one trip to aiosqlite's thread
    # (a cursor's execute, fetch and close would each be a trip).
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._db.execute_fetchall(sql, args))

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db.execute_fetchall(sql, args)

    async def script(self, sql: str) -> None:
        # executescript() would COMMIT first; run statement by statement instead, so a
        # migration stays inside the caller's transaction. Our SQL has no ';' in literals.
        for statement in sql.split(";"):
            if statement.strip():
                await self.execute(statement)


class _ReadExecutor:
    """Point reads and small pages on the event loop's own thread.

    A read of an indexed row takes microseconds, far less than the hand-off to
    aiosqlite's thread and back. In WAL mode readers never wait for writers, and
    with autocommit each statement sees every commit made before it.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return self._db.execute(sql, args).fetchall()

    async def execute(self, sql: str, *args: Any) -> None:
        raise TypeError("the read connection does not write")

    async def script(self, sql: str) -> None:
        raise TypeError("the read connection does not write")


class _LoopWriter:
    """One small write statement on the event loop's thread, else aiosqlite's thread.

    A WAL commit without fsync (synchronous=NORMAL) takes microseconds; the trip to
    aiosqlite's thread costs about 100. This connection never waits for a lock
    (busy_timeout 0): when another connection or process holds the write lock, the
    statement goes to aiosqlite's thread, which waits without blocking the loop. It
    never checkpoints either (that would fsync on the loop): the store runs passive
    checkpoints on aiosqlite's thread every CHECKPOINT_EVERY writes.
    """

    def __init__(self, store: SQLiteStore, db: sqlite3.Connection) -> None:
        self._store = store
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            rows = self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            async with self._store._conn() as db:
                return await db.fetch(sql, *args)
        self._store._wrote()
        return rows

    async def execute(self, sql: str, *args: Any) -> None:
        await self.fetch(sql, *args)

    async def script(self, sql: str) -> None:
        raise TypeError("the loop writer runs single statements only")


CHECKPOINT_EVERY = 500


class SQLiteStore(SQLStore):
    dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection, reader: sqlite3.Connection | None = None) -> None:
        self._db = db
        self._executor = _SQLiteExecutor(db)
        self._reader = reader
        self._read_executor = _ReadExecutor(reader) if reader is not None else None
        self._writer: sqlite3.Connection | None = None
        self._loop_writer: _LoopWriter | None = None
        self._writes = 0
        self._checkpoint: asyncio.Task[None] | None = None
        # One connection serves every task: without this lock, a statement of one
        # task could land inside another task's open transaction (and its rollback).
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, *, schema_upto: int | None = None) -> SQLiteStore:
        """Open (creating) the file and migrate it; `schema_upto` stops at a version."""
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA busy_timeout=5000")
            await _use_wal(db)
            await db.execute("PRAGMA synchronous=NORMAL")
            store = cls(db)
            await store.migrate(schema_upto)
        except BaseException:
            await db.close()
            raise
        if path != ":memory:":
            reader = sqlite3.connect(
                f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None
            )
            reader.execute("PRAGMA busy_timeout=5000")
            store._reader, store._read_executor = reader, _ReadExecutor(reader)
            writer = sqlite3.connect(str(Path(path).resolve()), isolation_level=None)
            writer.execute("PRAGMA busy_timeout=0")
            writer.execute("PRAGMA synchronous=NORMAL")
            writer.execute("PRAGMA wal_autocheckpoint=0")
            store._writer, store._loop_writer = writer, _LoopWriter(store, writer)
        return store

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % CHECKPOINT_EVERY == 0 and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        async with self._conn() as db:
            await db.fetch("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        if self._checkpoint is not None:
            await self._checkpoint
        for connection in (self._reader, self._writer):
            if connection is not None:
                connection.close()
        await self._db.close()

    def _write(self) -> AbstractAsyncContextManager[Executor]:
        if self._loop_writer is None:
            return self._conn()
        return _Ready(self._loop_writer)

    def _read(self) -> AbstractAsyncContextManager[Executor]:
        if self._read_executor is None:
            return self._conn()
        return _Ready(self._read_executor)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Executor]:
        async with self._lock:
            yield self._executor

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Executor]:
        # IMMEDIATE takes the write lock up front, so a transaction that reads then
        # writes (a claim, a migration) never loses a race to another process.
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._executor
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    def _exclusive(self) -> AbstractAsyncContextManager[Executor]:
        # BEGIN IMMEDIATE already excludes every other writer of the file.
        return self._tx()


class _Ready:
    """An executor that needs no lock or transaction, as an async context manager.

    A plain class: the generator behind @asynccontextmanager costs more than the
    point read it wraps.
    """

    __slots__ = ("_executor",)

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def __aenter__(self) -> Executor:
        return self._executor

    async def __aexit__(self, *exc: object) -> None:
        return None


async def _use_wal(db: aiosqlite.Connection) -> None:
    """Switch to WAL, retrying while another process opening the same file holds the lock.

    Changing the journal mode takes a lock SQLite doesn't wait for (busy_timeout
    doesn't apply), so processes starting together would otherwise fail at once.
    """
    for attempt in range(_WAL_TRIES):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_TRIES - 1:
                raise
            await asyncio.sleep(0.05)
