"""Batch history (migration 0013) and the operators' batch list across tenants, in the
SQL that SQLite and PostgreSQL share (a mixin of SQLStore).

Status events are written by the batch writes themselves (`sql.update_batch`,
`rows.insert_batch_row`); this module adds the others and reads them back.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.store.base import AdminFilter, BatchEvent, BatchRecord, Page, UnknownCursor
from gateway.store.migrate import Executor
from gateway.store.rows import BATCH_COLS, batch_from_row

# Rows read per query while a metadata filter (applied here, not in SQL: the object is
# TEXT in SQLite and jsonb in PostgreSQL) looks for a page's worth of matches.
SCAN_CHUNK = 500


class EventStore(ABC):
    @abstractmethod
    def _conn(self) -> AbstractAsyncContextManager[Executor]: ...

    async def add_batch_event(self, event: BatchEvent) -> None:
        async with self._conn() as db:
            await db.execute(
                "INSERT INTO batch_events (batch_id, at, kind, status, provider, outcome, detail)"
                " VALUES (?,?,?,?,?,?,?)",
                event.batch_id,
                event.at or int(time.time()),
                event.kind,
                event.status,
                event.provider,
                event.outcome,
                event.detail,
            )

    async def batch_events(self, batch_id: str) -> list[BatchEvent]:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT batch_id, at, kind, status, provider, outcome, detail FROM batch_events"
                " WHERE batch_id = ? ORDER BY seq",
                batch_id,
            )
        return [BatchEvent(r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def routing_rules(self, batch_ids: Sequence[str]) -> dict[str, str]:
        if not batch_ids:
            return {}
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT batch_id, detail FROM batch_events WHERE kind = 'routed'"
                f" AND batch_id IN ({','.join('?' * len(batch_ids))}) ORDER BY seq",
                *batch_ids,
            )
        return {r[0]: r[1] for r in rows if r[1] is not None}  # the latest one wins

    async def admin_batches(
        self, where: AdminFilter, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        # A sharded batch's children are the gateway's: clients hold only their parent.
        sql, args = "parent_id IS NULL", list[Any]()
        for column, value in (
            ("tenant", where.tenant),
            ("provider", where.provider),
            ("status", where.status),
        ):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if where.created_after is not None:
            sql += " AND created_at >= ?"
            args.append(where.created_after)
        if where.created_before is not None:
            sql += " AND created_at < ?"
            args.append(where.created_before)
        async with self._conn() as db:
            cursor: int | None = None
            if after is not None:
                found = await db.fetch(
                    "SELECT seq FROM batches WHERE id = ? AND parent_id IS NULL", after
                )
                if not found:
                    raise UnknownCursor(after)
                cursor = int(found[0][0])
            if where.metadata is None:
                rows = await db.fetch(
                    f"SELECT {BATCH_COLS} FROM batches WHERE {sql}"
                    + (" AND seq < ?" if cursor is not None else "")
                    + " ORDER BY seq DESC LIMIT ?",
                    *args,
                    *([cursor] if cursor is not None else []),
                    limit + 1,
                )
                records = [batch_from_row(r) for r in rows]
                return Page(records[:limit], len(records) > limit)
            # Keyset pages of the SQL-filtered rows until limit + 1 match (or none are left),
            # so has_more and the next page's cursor are exact.
            key, value = where.metadata
            matched: list[BatchRecord] = []
            while len(matched) <= limit:
                rows = await db.fetch(
                    f"SELECT {BATCH_COLS}, seq FROM batches WHERE {sql}"
                    + (" AND seq < ?" if cursor is not None else "")
                    + " ORDER BY seq DESC LIMIT ?",
                    *args,
                    *([cursor] if cursor is not None else []),
                    SCAN_CHUNK,
                )
                for row in rows:
                    record = batch_from_row(row)
                    if (record.object.get("metadata") or {}).get(key) == value:
                        matched.append(record)
                if len(rows) < SCAN_CHUNK:
                    break
                cursor = int(rows[-1][-1])
        return Page(matched[:limit], len(matched) > limit)
