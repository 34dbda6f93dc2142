"""Benchmark inputs: batch input files, and batches seeded straight into the store."""

from __future__ import annotations

import random
import sqlite3
import string
import time
from pathlib import Path

import orjson

ENDPOINT = "/v1/chat/completions"
OPEN_TENANT = "default"  # the tenant of `auth: {open: true}`


def write_jsonl(path: Path, lines: int, line_bytes: int, model: str = "gpt-4o-mini") -> int:
    """A valid batch input file: `lines` chat requests of exactly `line_bytes` bytes each."""
    words = b"Summarize the following text in one sentence, please. "
    with open(path, "wb") as fh:
        for i in range(lines):
            head = (
                b'{"custom_id":"req-%07d","method":"POST","url":"/v1/chat/completions",'
                b'"body":{"model":"%s","max_tokens":64,"messages":'
                b'[{"role":"user","content":"' % (i, model.encode())
            )
            tail = b'"}]}}\n'
            pad = line_bytes - len(head) - len(tail)
            fh.write(head + (words * (pad // len(words) + 1))[:pad] + tail)
    return path.stat().st_size


def config_has(key: str) -> bool:
    """Whether this tree's gateway config has a top-level `key` (features land over time)."""
    from gateway.config import Config

    return key in Config.model_fields


async def migrate(db: Path) -> None:
    """Create the gateway's schema in `db` (the store migrates itself when opened)."""
    from gateway.store.sqlite import SQLiteStore

    store = await SQLiteStore.open(str(db))
    await store.close()


def seed_batches(db: Path, n: int, file_id: str, *, status: str, provider: str) -> list[str]:
    """Insert `n` batches straight into the gateway's SQLite file; returns their ids, oldest first.

    Creating 100,000 batches through the API would measure the create path for
    minutes; the rows written here are what a create leaves behind.
    """
    rng = random.Random(n)
    alphabet = string.ascii_letters + string.digits
    now = int(time.time())
    terminal = status == "completed"
    ids, rows = [], []
    for i in range(n):
        batch_id = "batch_" + "".join(rng.choices(alphabet, k=24))
        ids.append(batch_id)
        obj = {
            "id": batch_id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": "gpt-4o-mini",
            "errors": None,
            "input_file_id": file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": now,
            "expires_at": now + 86_400,
            "finalizing_at": now if terminal else None,
            "completed_at": now if terminal else None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 1000, "completed": 1000 if terminal else 400, "failed": 0},
            "usage": None,
            "metadata": {"seeded": str(i)},
        }
        upstream = f"batch_seed{i}"
        rows.append(
            (batch_id, OPEN_TENANT, provider, upstream, file_id, status, 0, now, orjson.dumps(obj))
        )
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            con.executemany(
                "INSERT INTO batches (id, tenant, provider, upstream_id, input_file_id, status,"
                " pending, created_at, object) VALUES (?,?,?,?,?,?,?,?,?)",
                [(*r[:-1], r[-1].decode()) for r in rows],
            )
    finally:
        con.close()
    return ids
