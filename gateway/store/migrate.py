"""Versioned schema migrations, one runner for every backend.

Each backend keeps its own ordered SQL under `migrations/<dialect>/NNNN_name.sql`
(the dialects differ in types, not in history: version N means the same change
everywhere). Applied versions are rows of `schema_migrations`. Every migration
runs in its own transaction under a lock that spans processes (SQLite's write
lock, a PostgreSQL advisory lock), and the applied set is re-read under that
lock, so replicas starting at the same moment apply each version exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

Row = Sequence[Any]

# No DEFAULT expression: the way to say "now" differs between dialects, so the
# runner passes applied_at itself. SQLite files made before this module keep
# their older definition (same columns plus a default), which is compatible.
SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations"
    " (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
)


class Executor(Protocol):
    """One connection's worth of SQL, with `?` placeholders on every backend."""

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def script(self, sql: str) -> None:
        """Run several `;`-separated statements without parameters."""
        ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """Every migration shipped for `dialect` ("sqlite" or "postgres"), in order."""
    folder = resources.files("gateway.store").joinpath("migrations", dialect)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(
                Migration(int(number), rest.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda m: m.version)
    if not found:
        raise RuntimeError(f"no migrations shipped for {dialect!r}")
    return found


async def migrate(
    exclusive: Callable[[], AbstractAsyncContextManager[Executor]],
    dialect: str,
    upto: int | None = None,
) -> list[int]:
    """Apply the missing migrations up to `upto` (all by default); returns those applied.

    `exclusive()` opens a transaction holding the backend's cross-process lock.
    """
    applied_now = []
    for migration in migrations(dialect):
        if upto is not None and migration.version > upto:
            break
        async with exclusive() as db:
            await db.script(SCHEMA_TABLE)
            rows = await db.fetch(
                "SELECT 1 FROM schema_migrations WHERE version = ?", migration.version
            )
            if rows:
                continue
            await db.script(migration.sql)
            await db.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                migration.version,
                int(time.time()),
            )
        applied_now.append(migration.version)
    return applied_now


async def schema_version(db: Executor) -> int:
    """The highest applied version; 0 for an empty database."""
    rows = await db.fetch("SELECT max(version) FROM schema_migrations")
    return int(rows[0][0] or 0) if rows else 0
