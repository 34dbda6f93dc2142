"""Retries, backoff, concurrency limits and a circuit breaker around any adapter.

Every adapter is wrapped the same way, so none of them carries its own retry
loop. Creates are not retried when the failure is ambiguous (the provider may
have made the batch): the service resolves those with `find_batch` instead.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from providers.base import (
    BatchRequest,
    ByteStream,
    InputFile,
    Provider,
    ProviderError,
    UpstreamBatch,
    UpstreamFile,
)
from providers.retry import backoff_seconds

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]

# Reads of the provider's lists, which exactly-once creates depend on: the breaker
# neither pauses them nor counts them (a list that works says nothing of creates).
LOOKUPS = frozenset({"find", "list", "list_files"})
# A Retry-After longer than this is not waited out inside one client request.
MAX_RETRY_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class Policy:
    max_retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_concurrency: int = 64
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0


class Observer(Protocol):
    """Hooks for metrics; every method is optional to care about."""

    def attempt(self, provider: str, operation: str, outcome: str, seconds: float) -> None: ...

    def retry(self, provider: str, operation: str) -> None: ...

    def breaker(self, provider: str, state: BreakerState) -> None: ...


class NullObserver:
    def attempt(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        return None

    def retry(self, provider: str, operation: str) -> None:
        return None

    def breaker(self, provider: str, state: BreakerState) -> None:
        return None


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (cool-down) -> half_open -> one probe."""

    def __init__(
        self,
        failures: int,
        cooldown: float,
        *,
        on_change: Callable[[BreakerState], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._on_change = on_change
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state: BreakerState = "closed"

    def _set(self, state: BreakerState) -> None:
        if state != self.state:
            self.state = state
            self._on_change(state)

    def available(self) -> bool:
        """Whether routing may pick this provider now (no side effects)."""
        if self.state == "open":
            return self._clock() - self._opened_at >= self._cooldown
        return not (self.state == "half_open" and self._probing)

    def allow(self) -> bool:
        """Whether a call may go out now; in half_open only one probe at a time."""
        if self.state == "open":
            if self._clock() - self._opened_at < self._cooldown:
                return False
            self._set("half_open")
        if self.state == "half_open":
            if self._probing:
                return False
            self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self._set("closed")

    def release(self) -> None:
        """A call ended without a verdict (cancelled): let another probe go."""
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        self._probing = False
        if self.state == "half_open" or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._set("open")


@dataclass(frozen=True, slots=True)
class Health:
    """A provider's recent calls as operators see them (None: no calls to tell from)."""

    calls: int
    error_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None


class CallWindow:
    """The last `size` call attempts within `seconds`: when, whether it failed, how long.

    Bounded both ways, so a busy provider costs a fixed amount of memory and a quiet
    one reports only what is recent.
    """

    def __init__(
        self,
        size: int = 200,
        seconds: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._calls: deque[tuple[float, bool, float]] = deque(maxlen=size)
        self._seconds = seconds
        self._clock = clock

    def add(self, failed: bool, seconds: float) -> None:
        self._calls.append((self._clock(), failed, seconds))

    def health(self) -> Health:
        since = self._clock() - self._seconds
        recent = [(failed, seconds) for at, failed, seconds in self._calls if at >= since]
        if not recent:
            return Health(0, None, None, None)
        durations = sorted(seconds * 1000.0 for _, seconds in recent)
        errors = sum(1 for failed, _ in recent if failed)
        return Health(
            len(recent),
            errors / len(recent),
            _percentile(durations, 0.50),
            _percentile(durations, 0.95),
        )


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1], 3)


class _Uncounted:
    """A breaker that lets every call through and counts none."""

    def allow(self) -> bool:
        return True

    def success(self) -> None:
        return None

    def failure(self) -> None:
        return None

    def release(self) -> None:
        return None


_UNCOUNTED = _Uncounted()


class ResilientProvider:
    """A `Provider` that retries, limits concurrency and trips a breaker."""

    def __init__(
        self,
        inner: Provider,
        policy: Policy,
        *,
        observer: Observer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.endpoints = inner.endpoints
        self.remote_files = inner.remote_files
        self.lookup = inner.lookup
        self.policy = policy
        self._observer = observer or NullObserver()
        self._sleep = sleep
        self._limit = asyncio.Semaphore(policy.max_concurrency)
        # Every attempt, lookups included: what operators see of the provider's health.
        self.window = CallWindow(clock=clock)
        self.breaker = CircuitBreaker(
            policy.breaker_failures,
            policy.breaker_cooldown,
            on_change=lambda state: self._observer.breaker(self.name, state),
            clock=clock,
        )

    def supports(self, endpoint: str) -> bool:
        return self.inner.supports(endpoint)

    def available(self) -> bool:
        return self.breaker.available()

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        return backoff_seconds(
            attempt, self.policy.backoff, retry_after, cap=self.policy.max_backoff
        )

    async def call(
        self, operation: str, fn: Callable[[], Awaitable[T]], *, idempotent: bool = True
    ) -> T:
        """One logical call: the breaker counts it once, however many attempts it took."""
        breaker = self.breaker if operation not in LOOKUPS else _UNCOUNTED
        if not breaker.allow():
            raise ProviderError(
                "retryable", "the provider is failing; calls are paused", code="circuit_open"
            )
        for attempt in range(self.policy.max_retries + 1):
            started = time.perf_counter()
            try:
                async with self._limit:
                    result = await fn()
            except ProviderError as exc:
                elapsed = time.perf_counter() - started
                self._observer.attempt(self.name, operation, exc.kind, elapsed)
                # A refusal about the request itself (bad input, not found) is not the
                # provider failing.
                self.window.add(exc.retryable, elapsed)
                if not exc.retryable:
                    breaker.success()  # it answered: the provider itself is healthy
                    raise
                last = attempt == self.policy.max_retries
                too_long = (exc.retry_after or 0) > MAX_RETRY_AFTER
                if last or too_long or (exc.ambiguous and not idempotent):
                    breaker.failure()
                    raise
                self._observer.retry(self.name, operation)
                await self._sleep(self.backoff(attempt, exc.retry_after))
            except BaseException:
                breaker.release()  # cancelled mid-call: neither success nor failure
                raise
            else:
                elapsed = time.perf_counter() - started
                self._observer.attempt(self.name, operation, "ok", elapsed)
                self.window.add(False, elapsed)
                breaker.success()
                return result
        raise AssertionError("unreachable")

    async def upload_file(self, file: InputFile) -> str:
        return await self.call("upload", lambda: self.inner.upload_file(file))

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        return await self.call("create", lambda: self.inner.create_batch(request), idempotent=False)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        return await self.call("get", lambda: self.inner.get_batch(upstream_id))

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        return await self.call("cancel", lambda: self.inner.cancel_batch(upstream_id))

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        return await self.call("get_file", lambda: self.inner.get_file(upstream_file_id))

    async def find_batch(self, gateway_batch_id: str, since: int) -> UpstreamBatch | None:
        return await self.call("find", lambda: self.inner.find_batch(gateway_batch_id, since))

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        return await self.call("list", lambda: self.inner.tagged_batches(since))

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        return await self.call("list_files", lambda: self.inner.tagged_files(since))

    async def delete_file(self, upstream_file_id: str) -> None:
        await self.call("delete_file", lambda: self.inner.delete_file(upstream_file_id))

    async def candidates(self, request: BatchRequest, since: int) -> list[UpstreamBatch]:
        return await self.call("list", lambda: self.inner.candidates(request, since))

    async def adopt(self, upstream_id: str, request: BatchRequest) -> UpstreamBatch:
        return await self.call("get", lambda: self.inner.adopt(upstream_id, request))

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self._content(upstream_file_id)

    @asynccontextmanager
    async def _content(self, upstream_file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Retries cover opening the stream; a break mid-stream reaches the client."""

        async def enter() -> tuple[ByteStream, AsyncIterator[bytes]]:
            stream = self.inner.open_file_content(upstream_file_id)
            return stream, await stream.__aenter__()

        stream, chunks = await self.call("content", enter)
        try:
            yield chunks
        except BaseException as exc:
            if not await stream.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await stream.__aexit__(None, None, None)

    async def close(self) -> None:
        await self.inner.close()
