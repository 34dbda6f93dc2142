"""Sharded batches' children, in the SQL that SQLite and PostgreSQL share (a mixin of
SQLStore). What the rows mean is in migration 0012 and `gateway.sharding`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from gateway.store.base import BatchRecord, FileRecord, ShardRow
from gateway.store.migrate import Executor
from gateway.store.rows import (
    BATCH_COLS,
    NOT_TERMINAL,
    batch_from_row,
    insert_batch_row,
    insert_file_row,
)

_SHARD_COLS = "s.child_id, s.parent_id, s.position, s.attempt, s.lines, s.heals, s.examined"
_BATCH_COLS = ", ".join(f"b.{c.strip()}" for c in BATCH_COLS.split(","))


class _Taken(Exception):
    """A child (or a heal of the same child) is there already: roll the insert back."""


class ShardStore(ABC):
    @abstractmethod
    def _conn(self) -> AbstractAsyncContextManager[Executor]: ...

    @abstractmethod
    def _tx(self) -> AbstractAsyncContextManager[Executor]: ...

    async def add_children(
        self, files: Sequence[FileRecord], batches: Sequence[BatchRecord], rows: Sequence[ShardRow]
    ) -> bool:
        try:
            async with self._tx() as db:
                for row in rows:
                    if not await db.fetch(
                        "INSERT INTO shards (child_id, parent_id, position, attempt, heals, lines)"
                        " VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING child_id",
                        row.child_id,
                        row.parent_id,
                        row.position,
                        row.attempt,
                        row.heals,
                        row.lines,
                    ):
                        raise _Taken
                for file in files:
                    await insert_file_row(db, file)
                for batch in batches:
                    await insert_batch_row(db, batch)
        except _Taken:
            return False
        return True

    async def shard_children(self, parent_id: str) -> list[tuple[ShardRow, BatchRecord]]:
        async with self._conn() as db:
            found = await db.fetch(
                f"SELECT {_SHARD_COLS}, {_BATCH_COLS} FROM shards s"
                " JOIN batches b ON b.id = s.child_id"
                " WHERE s.parent_id = ? ORDER BY s.position, s.attempt",
                parent_id,
            )
        return [
            (
                ShardRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])),
                batch_from_row(r[7:]),
            )
            for r in found
        ]

    async def mark_examined(self, child_id: str) -> None:
        async with self._conn() as db:
            await db.execute("UPDATE shards SET examined = 1 WHERE child_id = ?", child_id)

    async def expire_child_files(self, now: float, *, accounted: bool) -> int:
        """Expire the files of ended sharded batches' children (their input slices and
        result copies: the merged files hold the lines now), once the children are
        accounted (`accounted`) and a result's provider copy is queued for deletion."""
        done = "p.accounted_at IS NOT NULL" if accounted else "TRUE"
        async with self._conn() as db:
            rows = await db.fetch(
                "UPDATE files SET expires_at = ? WHERE (expires_at IS NULL OR expires_at > ?)"
                " AND (upstream_id IS NULL OR upstream_released) AND batch_id IN ("
                " SELECT s.child_id FROM shards s JOIN batches p ON p.id = s.parent_id"
                f" WHERE NOT (p.{NOT_TERMINAL}) AND {done}) RETURNING id",
                int(now),
                int(now),
            )
        return len(rows)
