"""One emulated batch, run to its end by the gateway against a synchronous endpoint.

The results are written in parts (`emulated_spool.PartSpool`): every `flush_lines` finished
lines or `flush_seconds`, whichever comes first, the lines finished since the last flush
become committed part blobs, and only then does the saved state name them. A restart
re-reads the parts, skips every custom_id found there and sends only the rest; the lines
that finished after the last flush of a process that crashed are sent again (at most one
flush window's worth). A shutdown flushes first, so it sends nothing twice.

Stopping comes in four kinds:
- cancel: stop dispatching, let in-flight requests finish, the rest -> `batch_cancelled`;
- expiry of the completion window: stop dispatching and abandon in-flight requests (the
  window is a hard limit), the rest -> `batch_expired`;
- shutdown (`close`): stop dispatching, give in-flight requests a grace period, flush
  what finished and write nothing more; the batch resumes in the next process;
- lost lease (another process took the batch over): stop at once, write nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from providers.base import ProviderError, now
from providers.emulated_spool import PartSpool
from providers.http import RawResponse, kind_for_status
from providers.ratelimit import Throttle, estimate_tokens
from providers.results import (
    CANCELLED,
    EXPIRED,
    error_body,
    error_line,
    response_line,
    stable_hex,
)
from providers.retry import backoff_seconds, retry_after_seconds

__all__ = ["BatchRun", "Limits", "Send"]

log = logging.getLogger("providers.emulated")

_LOST = ("gateway_error", "The gateway could not run this request; see its log.")
_OUTCOMES = {"cancelled": CANCELLED, "expired": EXPIRED, "completed": None}
# POST `path` (the line's url without /v1) with a JSON body; transport failures raise.
Send = Callable[[str, bytes], Awaitable[RawResponse]]
Json = dict[str, Any]
Lines = Callable[[], AsyncIterator[tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 8
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_retries: int = 5
    retry_backoff_seconds: float = 1.0
    completion_window_seconds: float = 86_400
    # How much finished work a crash can make the next process send again.
    flush_lines: int = 1000
    flush_seconds: float = 2.0


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


class BatchRun:
    """Owns one batch's state dict while it runs; `save` persists it (one atomic write)."""

    def __init__(
        self,
        state: Json,
        *,
        lines: Lines,
        spool: PartSpool,
        save: Callable[[Json], Awaitable[None]],
        send: Send,
        throttle: Throttle,
        limits: Limits,
        scrub: Callable[[str], str],
    ) -> None:
        self.state = state
        self.lines = lines
        self.spool = spool
        self._save = save
        self._send = send
        self._throttle = throttle
        self._limits = limits
        self._scrub = scrub
        self.finished: set[str] = set()
        self.stop_reason: tuple[str, str] | None = CANCELLED if state["cancelling_at"] else None
        self._stop = asyncio.Event()
        self._flush_now = asyncio.Event()
        self._closing = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._main(), name=f"emulated {self.state['id']}")
        return self.task

    async def cancel(self, at: int | None = None) -> None:
        """Cancel (here, or as asked by another replica at `at`)."""
        if self.stop_reason is None and not self._closing:
            self.state["cancelling_at"] = at or now()
            self._halt(CANCELLED)
            await self._save(self.state)

    async def shutdown(self, grace_seconds: float, *, flush: bool = True) -> None:
        """Stop for a process exit: in-flight requests get `grace_seconds` to finish, then
        what finished is flushed (`flush=False` when another process has taken over)."""
        self._closing = True
        self._halt(None)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=grace_seconds)
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})
        if flush:
            try:
                await self.spool.flush()
            except Exception as exc:  # those lines are sent again by the next process
                log.error("emulated batch %s: flush at shutdown failed: %r", self.state["id"], exc)

    def _halt(self, reason: tuple[str, str] | None) -> None:
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        if self._dispatcher is not None:
            self._dispatcher.cancel()

    def _expire(self) -> None:
        self._halt(EXPIRED)
        for task in list(self._in_flight):
            task.cancel()

    async def _main(self) -> None:
        self.finished = await self.spool.recover()
        deadline = self.state["created"] + self._limits.completion_window_seconds
        if self.stop_reason is None and time.time() >= deadline:
            self.stop_reason = EXPIRED
        if self.state["in_progress_at"] is None:
            self.state["in_progress_at"] = now()
            await self._save(self.state)
        flusher = asyncio.create_task(self._flusher())
        try:
            if self.stop_reason is None and self.state.get("ending") is None:
                loop = asyncio.get_running_loop()
                timer = loop.call_later(max(0.0, deadline - time.time()), self._expire)
                try:
                    await self._execute()
                finally:
                    timer.cancel()
        finally:
            flusher.cancel()
            await asyncio.wait({flusher})
        if self._closing:
            return
        await self._finish()

    async def _flusher(self) -> None:
        """Flush every `flush_seconds`, or sooner when `flush_lines` are pending."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), self._limits.flush_seconds)
            self._flush_now.clear()
            try:
                await self.spool.flush()
            except Exception as exc:  # the lines stay pending; the next flush tries again
                log.error("emulated batch %s: flush failed: %r", self.state["id"], exc)

    async def _execute(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch())
        await asyncio.wait({self._dispatcher})
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def _dispatch(self) -> None:
        """Start a task per unfinished line, never more than the concurrency limit at once."""
        index = -1
        async for _, raw in self.lines():
            index += 1
            item = orjson.loads(raw)
            if item["custom_id"] in self.finished:
                continue
            await self._throttle.slots.acquire()
            task = asyncio.create_task(self._run_line(index, item))
            self._in_flight.add(task)
            task.add_done_callback(self._line_done)

    def _line_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._throttle.slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("emulated batch %s: a line failed unexpectedly: %r", self.state["id"], exc)

    def _add(self, line: Json) -> None:
        self.spool.add(line)
        self.finished.add(line["custom_id"])
        if self.spool.pending >= self._limits.flush_lines:
            self._flush_now.set()

    async def _run_line(self, index: int, item: Json) -> None:
        path = item["url"].removeprefix("/v1")
        body = orjson.dumps(item["body"])
        request = item["body"]
        tokens = estimate_tokens(
            body, request.get("max_completion_tokens", request.get("max_tokens"))
        )
        attempt = 0
        while True:
            await self._throttle.admit(tokens)
            if self._stop.is_set():
                return  # cancelled or shutting down before this request was sent
            try:
                outcome: RawResponse | ProviderError = await self._send(path, body)
            except ProviderError as exc:
                outcome = exc
            if isinstance(outcome, RawResponse) and (
                outcome.status < 400 or kind_for_status(outcome.status) != "retryable"
            ):
                break
            if attempt >= self._limits.max_retries:
                break
            headers = outcome.headers if isinstance(outcome, RawResponse) else {}
            delay = backoff_seconds(
                attempt, self._limits.retry_backoff_seconds, retry_after_seconds(headers)
            )
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return  # stopping: the line stays unfinished
        self._add(self._result(index, item["custom_id"], outcome))

    def _result(self, index: int, custom_id: str, outcome: RawResponse | ProviderError) -> Json:
        line_id = f"batch_req_{stable_hex(self.state['id'], index, 'line')}"
        if isinstance(outcome, ProviderError):
            return error_line(line_id, custom_id, ("upstream_unavailable", outcome.message))
        request_id = f"req_{stable_hex(self.state['id'], index, 'req')}"  # never the provider's
        body = _json(outcome.body)
        status = outcome.status
        if status < 300 and not isinstance(body, dict):
            status, body = (
                502,
                error_body("The upstream answer is not a JSON object.", "upstream_error"),
            )
        elif status >= 300 and not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
            text = outcome.body.decode("utf-8", "replace").strip() or f"HTTP {status}"
            body = error_body(self._scrub(text), "upstream_error")
        return response_line(line_id, custom_id, status, request_id, body)

    async def _finish(self) -> None:
        """Write the lines that never ran, publish the files, record the final state."""
        state = self.state
        status = state.get("ending")
        if status is None:  # decided once: a crash while finishing must not change it
            reason = self.stop_reason  # read once: a cancel may still arrive while finalizing
            # Without a stop, a line is unfinished only if its task failed (logged).
            unfinished = await self._unfinished()
            if reason == EXPIRED and not unfinished:
                reason = None  # every line had finished: a restart after the window ended
            status = {CANCELLED: "cancelled", EXPIRED: "expired", None: "completed"}[reason]
            state["ending"] = status
            state["finalizing_at"] = state["finalizing_at"] or now()
            await self._save(state)
        else:
            unfinished = await self._unfinished()
        for index, custom_id in unfinished:
            line_id = f"batch_req_{stable_hex(state['id'], index, 'line')}"
            self._add(error_line(line_id, custom_id, _OUTCOMES[status] or _LOST))
        state["result"] = await self.spool.publish(state["result_files"], state["id"])
        state["status"] = status
        state[f"{status}_at"] = now()
        parts = state.pop("parts")
        await self._save(state)
        # A crash right here leaves these parts behind, unnamed by any state.
        await self.spool.delete_parts(parts)

    async def _unfinished(self) -> list[tuple[int, str]]:
        """(index, custom_id) of every line that has no result yet."""
        missing = []
        index = -1
        async for _, raw in self.lines():
            index += 1
            custom_id = orjson.loads(raw)["custom_id"]
            if custom_id not in self.finished:
                missing.append((index, custom_id))
        return missing
