"""Request-rate limiting behind one small interface.

`RateLimiter.hit` is all the middleware calls. Counts live in the store, so a
key's limit holds across workers and replicas. Windows are fixed (per
wall-clock minute for `requests_per_minute`): one atomic counter row each.
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
