"""The one retry policy: how long to wait before trying again.

Every retry in the project waits `backoff_seconds`: the provider's `Retry-After` when it
sent one (`retry_after_seconds`), else exponential backoff with jitter. The loops that use
it are the resilience layer's (every provider call), the emulated adapter's (each line's
request), and the schedules of background work that retries across sweeps (settling
creates, webhooks, output copies, provider deletions).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

__all__ = ["MAX_BACKOFF_SECONDS", "backoff_seconds", "retry_after_seconds"]

MAX_BACKOFF_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 600.0


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
