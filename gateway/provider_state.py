"""The `StateStore` each adapter gets: its rows of the store's `provider_state` table,
and leases (named `provider:<name>:<key>`) so one live process carries on each piece of
work. A lease held by a process that died is freed when the instance is reaped."""

from __future__ import annotations

import time
from typing import Any

from gateway.store import Store


class StoreState:
    def __init__(self, store: Store, provider: str, owner: str) -> None:
        self._store = store
        self._provider = provider
        self._owner = owner

    async def load(self, key: str) -> dict[str, Any] | None:
        return await self._store.get_provider_state(self._provider, key)

    async def save(self, key: str, state: dict[str, Any], *, active: bool = False) -> None:
        await self._store.put_provider_state(
            self._provider, key, state, active=active, now=time.time()
        )

    async def delete(self, key: str) -> None:
        await self._store.delete_provider_state(self._provider, key)

    async def active(self) -> list[dict[str, Any]]:
        return await self._store.active_provider_states(self._provider)

    def _lease(self, key: str) -> str:
        return f"provider:{self._provider}:{key}"

    async def claim(self, key: str, seconds: float) -> bool:
        return await self._store.acquire_lease(self._lease(key), self._owner, seconds, time.time())

    async def release(self, key: str) -> None:
        await self._store.release_lease(self._lease(key), self._owner)
