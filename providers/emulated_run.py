"""One emulated batch, run to its end by the gateway against a synchronous endpoint.

The result files are the progress record: each finished line is one unbuffered append to
the output or error JSONL (`ResultSpool(durable=True)`), so there is no moment at which a
line counts as finished without its result, or has a result without counting. A restart
re-reads the files, skips every custom_id found there and sends only the rest.

Stopping comes in three kinds:
- cancel: stop dispatching, let in-flight requests finish, the rest -> `batch_cancelled`;
- expiry of the completion window: stop dispatching and abandon in-flight requests (the
  window is a hard limit), the rest -> `batch_expired`;
- shutdown (`close`): stop dispatching, give in-flight requests a grace period, write
  nothing more; the batch resumes in the next process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from providers.base import ProviderError, now
from providers.http import RawResponse, kind_for_status
from providers.localfiles import ResultSpool, input_lines
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
# POST `path` (the line's url without /v1) with a JSON body; transport failures raise.
Send = Callable[[str, bytes], Awaitable[RawResponse]]
Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int = 8
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_retries: int = 5
    retry_backoff_seconds: float = 1.0
    completion_window_seconds: float = 86_400


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


class BatchRun:
    """Owns one batch's state dict while it runs; `save` persists it atomically."""

    def __init__(
        self,
        state: Json,
        *,
        input_path: Path,
        spool: ResultSpool,
        save: Callable[[Json], None],
        send: Send,
        throttle: Throttle,
        limits: Limits,
        scrub: Callable[[str], str],
    ) -> None:
        self.state = state
        self.input_path = input_path
        self.spool = spool
        self._save = save
        self._send = send
        self._throttle = throttle
        self._limits = limits
        self._scrub = scrub
        self.finished: set[str] = set()
        self.stop_reason: tuple[str, str] | None = CANCELLED if state["cancelling_at"] else None
        self._stop = asyncio.Event()
        self._closing = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._main(), name=f"emulated {self.state['id']}")
        return self.task

    def cancel(self) -> None:
        if self.stop_reason is None:
            self.state["cancelling_at"] = now()
            self._save(self.state)
            self._halt(CANCELLED)

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop for a process exit: in-flight requests get `grace_seconds` to finish."""
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
        self.finished = await asyncio.to_thread(self.spool.recover)
        deadline = self.state["created"] + self._limits.completion_window_seconds
        if self.stop_reason is None and time.time() >= deadline:
            self.stop_reason = EXPIRED
        if self.state["in_progress_at"] is None:
            self.state["in_progress_at"] = now()
            self._save(self.state)
        with self.spool.writing(append=True):
            if self.stop_reason is None:
                loop = asyncio.get_running_loop()
                timer = loop.call_later(max(0.0, deadline - time.time()), self._expire)
                try:
                    await self._execute()
                finally:
                    timer.cancel()
            if self._closing:
                return
            await self._finish()

    async def _execute(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch())
        await asyncio.wait({self._dispatcher})
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def _dispatch(self) -> None:
        """Start a task per unfinished line, never more than the concurrency limit at once."""
        for index, (_, raw) in enumerate(input_lines(self.input_path)):
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
        self.spool.add(self._result(index, item["custom_id"], outcome))
        self.finished.add(item["custom_id"])

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
        if state["finalizing_at"] is None:
            state["finalizing_at"] = now()
            self._save(state)
        reason = self.stop_reason  # read once: a cancel may still arrive while finalizing
        # Without a stop, a line is unfinished only if its task failed unexpectedly (logged).
        unfinished = await asyncio.to_thread(self._write_unfinished, reason or _LOST)
        if reason == EXPIRED and unfinished == 0:
            reason = None  # every line had finished: a restart after the window ended
        state["result"] = self.spool.publish()
        status = {CANCELLED: "cancelled", EXPIRED: "expired", None: "completed"}[reason]
        state["status"] = status
        state[f"{status}_at"] = now()
        self._save(state)

    def _write_unfinished(self, reason: tuple[str, str]) -> int:
        """Every line that never got an answer, as `reason`; returns how many."""
        written = 0
        for index, (_, raw) in enumerate(input_lines(self.input_path)):
            custom_id = orjson.loads(raw)["custom_id"]
            if custom_id not in self.finished:
                line_id = f"batch_req_{stable_hex(self.state['id'], index, 'line')}"
                self.spool.add(error_line(line_id, custom_id, reason))
                self.finished.add(custom_id)
                written += 1
        return written
