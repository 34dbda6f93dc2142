"""Client-side limits for adapters that send requests one by one: how many at once, how
many requests and tokens per minute, and how long to wait before a retry.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

__all__ = ["TokenBucket", "Throttle", "backoff_seconds", "estimate_tokens", "retry_after_seconds"]

MAX_BACKOFF_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 600.0


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


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's `retry-after-ms` / `retry-after` (seconds or HTTP date), if any."""
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None:
            return min(max(float(ms) / 1000, 0.0), MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def backoff_seconds(
    attempt: int, base: float, retry_after: float | None = None, *, cap: float = MAX_BACKOFF_SECONDS
) -> float:
    """Delay before retry number `attempt + 1`: what the server asked for, else exponential
    with jitter (half to all of `base * 2**attempt`, at most `cap`) so that many calls
    failing together do not come back together. Every retry loop of the project uses it."""
    if retry_after is not None:
        return retry_after
    ceiling = min(cap, base * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)
