"""Client-side limits for adapters that send requests one by one: how many at once, and
how many requests and tokens per minute. (How long to wait before a retry: `retry.py`.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TokenBucket", "Throttle", "estimate_tokens"]


class TokenBucket:
    """A token bucket refilled at `per_minute / 60` per second.

    It holds one second's worth (at least one token), so a fresh limiter cannot fire a
    whole minute's budget at once and trip a server that counts in short windows. A
    request dearer than the bucket waits for a full bucket and leaves it in debt, which
    later requests wait out, so the long-run rate holds for requests of any size.
    """

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self._clock = clock
        self._updated = clock()
        self._lock = asyncio.Lock()  # first come, first served

    def wait_seconds(self, cost: float) -> float:
        """How long until a request of `cost` may go (0: now)."""
        t = self._clock()
        self.tokens = min(self.capacity, self.tokens + (t - self._updated) * self.rate)
        self._updated = t
        need = min(cost, self.capacity)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def take(self, cost: float) -> None:
        self.tokens -= cost

    async def acquire(self, cost: float = 1.0) -> None:
        async with self._lock:
            while (delay := self.wait_seconds(cost)) > 0:
                await asyncio.sleep(delay)
            self.take(cost)


class Throttle:
    """The budget every batch of one provider shares: the upstream is one server."""

    def __init__(
        self,
        concurrency: int,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
    ) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None

    async def admit(self, tokens: int) -> None:
        """Wait until one more request of about `tokens` tokens fits the per-minute limits."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(tokens)


def estimate_tokens(body: bytes, max_tokens: object = None) -> int:
    """About four bytes of JSON per prompt token, plus what the answer may cost."""
    answer = max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else 0
    return max(1, len(body) // 4 + max(answer, 0))
