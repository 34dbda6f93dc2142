"""Adapters' own state, in the SQL that SQLite and PostgreSQL share (a mixin of SQLStore).

One JSON object per (provider, key): see `providers.context.StateStore`, which
`gateway.provider_state` implements over these methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson

from gateway.store.migrate import Executor


class ProviderStateStore(ABC):
    """The Store's provider-state methods, over the connections SQLStore provides."""

    @abstractmethod
    def _conn(self) -> AbstractAsyncContextManager[Executor]: ...

    async def get_provider_state(self, provider: str, key: str) -> dict[str, Any] | None:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT state FROM provider_state WHERE provider = ? AND key = ?", provider, key
            )
        return orjson.loads(rows[0][0]) if rows else None

    async def put_provider_state(
        self, provider: str, key: str, state: dict[str, Any], *, active: bool, now: float
    ) -> None:
        async with self._conn() as db:
            await db.execute(
                "INSERT INTO provider_state (provider, key, state, active, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, key) DO UPDATE SET"
                " state = excluded.state, active = excluded.active,"
                " updated_at = excluded.updated_at",
                provider,
                key,
                orjson.dumps(state).decode(),
                int(active),
                float(now),
            )

    async def delete_provider_state(self, provider: str, key: str) -> None:
        async with self._conn() as db:
            await db.execute(
                "DELETE FROM provider_state WHERE provider = ? AND key = ?", provider, key
            )

    async def active_provider_states(self, provider: str) -> list[dict[str, Any]]:
        async with self._conn() as db:
            rows = await db.fetch(
                "SELECT state FROM provider_state WHERE provider = ? AND active = 1"
                " ORDER BY updated_at",
                provider,
            )
        return [orjson.loads(row[0]) for row in rows]
