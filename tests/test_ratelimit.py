"""Client-side limits and the retry policy as plain functions and objects, on a fake clock."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from providers.ratelimit import TokenBucket, estimate_tokens
from providers.retry import backoff_seconds, retry_after_seconds


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_limiter_allows_one_seconds_worth_then_spaces_requests() -> None:
    clock = Clock()
    limiter = TokenBucket(120, clock=clock)  # 2 per second
    for _ in range(2):
        assert limiter.wait_seconds(1) == 0
        limiter.take(1)
    assert limiter.wait_seconds(1) == pytest.approx(0.5)
    clock.t += 0.5
    assert limiter.wait_seconds(1) == 0


def test_a_request_dearer_than_the_bucket_leaves_debt() -> None:
    clock = Clock()
    limiter = TokenBucket(60_000, clock=clock)  # 1,000 tokens per second, bucket of 1,000
    assert limiter.wait_seconds(3_000) == 0  # a full bucket admits it...
    limiter.take(3_000)
    assert limiter.wait_seconds(10) == pytest.approx(2.01)  # ...and the next waits it out
    clock.t += 10
    assert limiter.tokens <= limiter.capacity and limiter.wait_seconds(10) == 0


async def test_acquire_waits_for_the_bucket() -> None:
    limiter = TokenBucket(60 * 50)  # 50 per second, bucket of 50
    limiter.take(limiter.capacity + 5)  # 5 in debt: the next needs 6 tokens, 0.12 s
    start = time.monotonic()
    await limiter.acquire(1)
    assert 0.1 <= time.monotonic() - start < 0.5


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert date is not None and 25 < date <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "-5"}) == 0
    assert retry_after_seconds({"retry-after": "999999"}) == 600  # capped


def test_backoff_is_exponential_with_jitter_unless_the_server_says() -> None:
    assert backoff_seconds(3, 1.0, retry_after=7.0) == 7.0
    for attempt, ceiling in ((0, 0.5), (2, 2.0), (20, 60.0)):
        delays = {backoff_seconds(attempt, 0.5) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


def test_estimate_tokens() -> None:
    assert estimate_tokens(b"x" * 400) == 100
    assert estimate_tokens(b"x" * 400, 50) == 150
    assert estimate_tokens(b"", None) == 1
    assert estimate_tokens(b"x" * 8, True) == 2  # a bool is not a token count
