"""Columns and row <-> record conversion, shared by every SQL backend.

JSON travels as text both ways (SQLite TEXT; PostgreSQL jsonb, which asyncpg
reads and writes as text without a codec), and flags as Python bools (SQLite
stores 0/1), so one conversion serves both backends.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.store.base import BatchRecord, FileRecord
from gateway.store.migrate import Executor, Row

FILE_COLS = (
    "id, tenant, purpose, filename, bytes, created_at, expires_at, sha256, line_count,"
    " endpoint, models, blob, provider, upstream_id, batch_id"
)
BATCH_COLS = (
    "id, tenant, provider, input_file_id, created_at, object, upstream_id, pending, output_ttl,"
    " webhook, owner, settle_attempts, parent_id"
)
# Matches the partial indexes' predicate, so the planner can use them.
NOT_TERMINAL = "status NOT IN ('completed', 'failed', 'expired', 'cancelled')"
# Files that are not a sharded batch's children's (their inputs and results are internal).
NOT_CHILDS = (
    "(files.batch_id IS NULL OR NOT EXISTS (SELECT 1 FROM shards WHERE child_id = files.batch_id))"
)


def file_from_row(row: Row) -> FileRecord:
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


def batch_from_row(row: Row) -> BatchRecord:
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
        owner=row[10],
        settle_attempts=row[11],
        parent_id=row[12],
    )


def to_json(value: Any) -> str:
    return orjson.dumps(value).decode()


async def insert_file_row(db: Executor, record: FileRecord) -> str:
    """Insert a file; for a provider file already stored, the existing row's id.

    Two refreshes of one batch (a poll and a cancel) may both meet a new provider file:
    the first row wins, and the no-op update makes RETURNING name it.
    """
    rows = await db.fetch(
        f"INSERT INTO files ({FILE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (provider, upstream_id) WHERE upstream_id IS NOT NULL"
        " DO UPDATE SET upstream_id = excluded.upstream_id RETURNING id",
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
        to_json(list(record.models)),
        record.blob,
        record.provider,
        record.upstream_id,
        record.batch_id,
    )
    return str(rows[0][0])


async def insert_batch_row(db: Executor, record: BatchRecord) -> None:
    await db.execute(
        f"INSERT INTO batches ({BATCH_COLS}, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        record.id,
        record.tenant,
        record.provider,
        record.input_file_id,
        record.created_at,
        to_json(record.object),
        record.upstream_id,
        record.pending,
        record.output_ttl,
        record.webhook,
        record.owner,
        record.settle_attempts,
        record.parent_id,
        record.status,
    )
    await insert_status_event(db, record.id, record.status)


async def insert_status_event(db: Executor, batch_id: str, status: str) -> None:
    """Record that a batch took a status (inside the transaction that wrote it)."""
    await db.execute(
        "INSERT INTO batch_events (batch_id, at, kind, status) VALUES (?, ?, 'status', ?)",
        batch_id,
        int(time.time()),
        status,
    )
