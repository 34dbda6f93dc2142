"""Idempotency-Key rows, in the SQL that SQLite and PostgreSQL share (a mixin of SQLStore).

One row per (tenant, key). While its request runs, a row has no `status`: it is
held by `owner` until `locked_until`, a lock the running request renews, so a
process that dies mid-request frees the key once the lock runs out. Once the
request has answered, the row keeps the operation, the request's fingerprint and
the answer (status and body bytes) until pruned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from gateway.store.migrate import Executor


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A key someone else holds: its stored answer, or the claim of a request still running."""

    operation: str
    fingerprint: str | None
    status: int | None
    body: bytes | None
    locked_until: float | None

    @property
    def answered(self) -> bool:
        return self.status is not None


class IdempotencyStore(ABC):
    """The Store's idempotency methods, over the connections SQLStore provides."""

    @abstractmethod
    def _conn(self) -> AbstractAsyncContextManager[Executor]: ...

    @abstractmethod
    def _tx(self) -> AbstractAsyncContextManager[Executor]: ...

    @abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Executor]: ...

    async def claim_idempotency_key(
        self, tenant: str, key: str, operation: str, owner: str, now: float, lock_seconds: float
    ) -> IdempotencyRecord | None:
        # One transaction: the upsert takes the key when it is free (no row, or a lock
        # that ran out); when it is not, the row it met stays as it is (SQLite's write
        # lock, PostgreSQL's row lock taken by ON CONFLICT) for the read that follows.
        async with self._tx() as db:
            claimed = await db.fetch(
                "INSERT INTO idempotency_keys"
                " (tenant, key, operation, owner, locked_until, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, key) DO UPDATE SET operation = excluded.operation,"
                " owner = excluded.owner, locked_until = excluded.locked_until,"
                " created_at = excluded.created_at"
                " WHERE idempotency_keys.status IS NULL AND idempotency_keys.locked_until <= ?"
                " RETURNING owner",
                tenant,
                key,
                operation,
                owner,
                float(now + lock_seconds),
                float(now),
                float(now),
            )
            if claimed:
                return None
            rows = await db.fetch(
                "SELECT operation, fingerprint, status, body, locked_until FROM idempotency_keys"
                " WHERE tenant = ? AND key = ?",
                tenant,
                key,
            )
        operation, fingerprint, status, body, locked_until = rows[0]
        return IdempotencyRecord(
            operation,
            fingerprint,
            None if status is None else int(status),
            None if body is None else bytes(body),
            locked_until,
        )

    async def renew_idempotency_key(self, tenant: str, key: str, owner: str, until: float) -> bool:
        async with self._write() as db:
            rows = await db.fetch(
                "UPDATE idempotency_keys SET locked_until = ?"
                " WHERE tenant = ? AND key = ? AND owner = ? AND status IS NULL RETURNING owner",
                float(until),
                tenant,
                key,
                owner,
            )
        return bool(rows)

    async def finish_idempotency_key(
        self,
        tenant: str,
        key: str,
        owner: str,
        *,
        fingerprint: str,
        status: int,
        body: bytes,
        now: float,
    ) -> bool:
        async with self._write() as db:
            rows = await db.fetch(
                "UPDATE idempotency_keys SET fingerprint = ?, status = ?, body = ?,"
                " owner = NULL, locked_until = NULL, created_at = ?"
                " WHERE tenant = ? AND key = ? AND owner = ? AND status IS NULL RETURNING key",
                fingerprint,
                status,
                body,
                float(now),
                tenant,
                key,
                owner,
            )
        return bool(rows)

    async def release_idempotency_key(self, tenant: str, key: str, owner: str) -> None:
        async with self._write() as db:
            await db.execute(
                "DELETE FROM idempotency_keys"
                " WHERE tenant = ? AND key = ? AND owner = ? AND status IS NULL",
                tenant,
                key,
                owner,
            )

    async def prune_idempotency_keys(self, before: float) -> int:
        async with self._conn() as db:
            rows = await db.fetch(
                "DELETE FROM idempotency_keys WHERE created_at < ? RETURNING key", float(before)
            )
        return len(rows)
