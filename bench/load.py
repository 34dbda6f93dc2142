"""An aiohttp load client: a fixed number of requests, a time cap, latency percentiles.

Loopback only. `concurrency` workers share one keep-alive connection pool and
take request numbers from a shared counter until `requests` have been sent or
`duration` seconds have passed, whichever comes first; so every run stops by
itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise ValueError(f"benchmarks only send traffic to loopback, not {host!r}")


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    # What the caller measured alongside (server CPU, upstream calls, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    # Percentiles a client reported itself (wrk) instead of a latency per request.
    percentiles_ms: dict[float, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        if q in self.percentiles_ms:
            return self.percentiles_ms[q]
        lat = self.latencies_ms
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, max(0, math.ceil(q / 100 * len(lat)) - 1))]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50, 3),
            "p90_ms": round(self.pct(90), 3),
            "p99_ms": round(self.p99, 3),
            "max_ms": round(self.pct(100), 3),
            **self.extra,
        }


def session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


async def run_load(
    urls: str | Sequence[str],
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    concurrency: int = 1,
    requests: int = 1000,
    duration: float = 10.0,
    warmup: int = 0,
) -> LoadResult:
    """Send up to `requests` requests (cycling through `urls`) within `duration` seconds."""
    url_list = [urls] if isinstance(urls, str) else list(urls)
    for url in url_list:
        check_loopback(url)
    hdrs = {"Authorization": "Bearer bench"}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    async with session(concurrency) as http:

        async def one(i: int) -> int:
            async with http.request(
                method, url_list[i % len(url_list)], data=body, headers=hdrs
            ) as resp:
                await resp.read()
                return resp.status

        # Warm-up: open the pool's connections and the servers' caches.
        for start in range(0, warmup, concurrency):
            await asyncio.gather(*(one(i) for i in range(start, min(warmup, start + concurrency))))

        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        counter = iter(range(requests))
        deadline = time.perf_counter() + duration
        clock = time.perf_counter

        async def worker() -> None:
            for i in counter:
                if clock() > deadline:
                    return
                t0 = clock()
                try:
                    status = await one(i)
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                latencies.append((clock() - t0) * 1000)
                statuses[status] += 1

        t0 = clock()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = clock() - t0
    latencies.sort()
    errors = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    return LoadResult(len(latencies), errors, elapsed, latencies, statuses)
