"""Provider copies to delete, in the SQL that SQLite and PostgreSQL share (a mixin of SQLStore).

`provider_deletions` is a queue: a copy is queued in the same transaction that makes the
gateway stop using it (an input file no batch there still runs, an output file the gateway
holds a copy of, a file the client deleted), so none is forgotten, and stays queued, with
its attempts and last error, until the provider confirms the delete.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from gateway.store.base import ProviderDeletion
from gateway.store.migrate import Executor
from gateway.store.rows import NOT_TERMINAL

_COLS = "provider, upstream_id, what, attempts, next_attempt_at, last_error"
_QUEUE = (
    f"INSERT INTO provider_deletions ({_COLS}) VALUES (?, ?, ?, 0, ?, NULL)"
    " ON CONFLICT (provider, upstream_id) DO NOTHING"
)


class RetentionStore(ABC):
    """The Store's retention methods, over the connections SQLStore provides."""

    @abstractmethod
    def _conn(self) -> AbstractAsyncContextManager[Executor]: ...

    @abstractmethod
    def _tx(self) -> AbstractAsyncContextManager[Executor]: ...

    async def queue_ended_inputs(self, providers: Sequence[str], now: float, limit: int) -> int:
        """Queue the copies of input files at these providers that a batch there used and
        no batch anywhere still runs from; they are no longer the gateway's cache."""
        if not providers:
            return 0
        async with self._tx() as db:
            rows = await db.fetch(
                "SELECT file_id, provider, upstream_id FROM upstream_files u"
                f" WHERE provider IN ({','.join('?' * len(providers))})"
                " AND EXISTS (SELECT 1 FROM batches b WHERE b.input_file_id = u.file_id"
                " AND b.provider = u.provider)"
                " AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.input_file_id = u.file_id"
                f" AND b.{NOT_TERMINAL}) LIMIT ?",
                *providers,
                limit,
            )
            for file_id, provider, upstream_id in rows:
                await db.execute(_QUEUE, provider, upstream_id, "input", float(now))
                await db.execute(
                    "DELETE FROM upstream_files WHERE file_id = ? AND provider = ?",
                    file_id,
                    provider,
                )
        return len(rows)

    async def queue_kept_outputs(self, providers: Sequence[str], now: float, limit: int) -> int:
        """Queue the provider copies of output files the gateway holds a copy of."""
        if not providers:
            return 0
        async with self._tx() as db:
            rows = await db.fetch(
                "UPDATE files SET upstream_released = TRUE WHERE id IN (SELECT id FROM files"
                " WHERE blob IS NOT NULL AND upstream_id IS NOT NULL AND NOT upstream_released"
                f" AND provider IN ({','.join('?' * len(providers))}) LIMIT ?)"
                " RETURNING provider, upstream_id",
                *providers,
                limit,
            )
            for provider, upstream_id in rows:
                await db.execute(_QUEUE, provider, upstream_id, "output", float(now))
        return len(rows)

    async def due_deletions(self, now: float, limit: int) -> list[ProviderDeletion]:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {_COLS} FROM provider_deletions WHERE next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                float(now),
                limit,
            )
        return [_deletion(r) for r in rows]

    async def finish_deletion(
        self, provider: str, upstream_id: str, *, retry_at: float | None, error: str | None
    ) -> None:
        """Done (`retry_at` None): the row goes. Else it waits until `retry_at`."""
        async with self._conn() as db:
            if retry_at is None:
                await db.execute(
                    "DELETE FROM provider_deletions WHERE provider = ? AND upstream_id = ?",
                    provider,
                    upstream_id,
                )
                return
            await db.execute(
                "UPDATE provider_deletions SET attempts = attempts + 1, next_attempt_at = ?,"
                " last_error = ? WHERE provider = ? AND upstream_id = ?",
                float(retry_at),
                error,
                provider,
                upstream_id,
            )

    async def leftovers(self) -> list[ProviderDeletion]:
        """Every copy still waiting to be deleted at its provider."""
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {_COLS} FROM provider_deletions ORDER BY provider, next_attempt_at"
            )
        return [_deletion(r) for r in rows]


def _deletion(row: Sequence[object]) -> ProviderDeletion:
    provider, upstream_id, what, attempts, next_at, error = row
    return ProviderDeletion(
        str(provider),
        str(upstream_id),
        str(what),
        int(attempts),  # type: ignore[call-overload]
        float(next_at),  # type: ignore[arg-type]
        None if error is None else str(error),
    )
