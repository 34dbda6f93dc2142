"""Request-rate limiting behind one small interface.

`RateLimiter.hit` is all the gateway calls, so the in-process window below can
later be swapped for one backed by the store (shared by every replica) without
touching the middleware. Windows are fixed (per wall-clock minute for
`requests_per_minute`): cheap, and exactly what a store counter row can do too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from gateway.store.base import Store


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_seconds: float) -> float | None:
        """Count one request; None if allowed, else seconds until the window resets."""
        ...


class InProcessWindow:
    """Fixed-window counters in this process (one replica's view)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str, limit: int, window_seconds: float) -> float | None:
        now = self._clock()
        slot = int(now // window_seconds)
        start, count = self._windows.get(key, (slot, 0))
        if start != slot:
            count = 0
        if count >= limit:
            return (slot + 1) * window_seconds - now
        self._windows[key] = (slot, count + 1)
        return None


class StoreWindow:
    """Fixed-window counters in the store: one limit shared by every worker and replica."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def hit(self, key: str, limit: int, window_seconds: float) -> float | None:
        now = self._clock()
        start = int(now // window_seconds * window_seconds)
        allowed, _ = await self._store.hit_rate_window(key, start, limit)
        return None if allowed else start + window_seconds - now
