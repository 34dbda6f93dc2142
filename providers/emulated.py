"""`type: emulated`: the gateway runs the batch itself against a synchronous
OpenAI-compatible API (a local vLLM or Ollama server, or any hosted chat/embeddings API).

Each input line is POSTed to `base_url` + the line's `url` without its `/v1` prefix, so
`base_url` names the API root the way OpenAI clients expect it
(`http://localhost:8000/v1` -> `http://localhost:8000/v1/chat/completions`). The body is
sent as written; any JSON endpoint works, and the config lists which ones routing may send
here (chat, embeddings and completions by default).

A background task per running batch (`emulated_run.BatchRun`) does the work; they share
one `Throttle` (concurrency, requests and tokens per minute), because the limits belong to
the upstream server. Nothing is kept on local disk: input copies and result files are
`StoredFiles` (`file-emu…`: blobs + facts in the state store), each batch's state is saved
under its id (`active` while it runs), and its results go to part blobs as it runs
(`emulated_spool`).

Who runs a batch: the process holding the store lease on its id (`state.claim`), renewed
every `renew_seconds`. On start-up and every `renew_seconds` after, each process lists
the active batches and resumes those it can claim, so a dead replica's batches are picked
up. A process that does not run a batch answers from its saved state (counts as of the
last flush); a cancel there is recorded under `<batch id>.cancel` for the running process
to see at its next renewal, or, if no process holds the batch, run to its end here.
`close()` stops the runs (in-flight requests get a grace period), flushes and releases
them, so the next process resumes at once. `dir` names only the folder of an earlier
version, imported once (`import_legacy_dir`) and renamed to `<dir>.imported`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field

from providers.base import (
    TERMINAL_STATUSES,
    TIMESTAMP_FIELDS,
    BatchRequest,
    ProviderError,
    RequestCounts,
    UpstreamBatch,
    now,
)
from providers.config import Endpoint, RemoteConfig
from providers.context import ProviderContext, ProviderType
from providers.emulated_run import BatchRun, Limits
from providers.emulated_spool import PartSpool, import_legacy_spool
from providers.http import HTTPProvider, RawResponse
from providers.ratelimit import Throttle
from providers.stored_files import Once, StoredFileMethods, StoredFiles, import_legacy_dir

__all__ = ["EmulatedProvider", "Limits"]

log = logging.getLogger("providers.emulated")

_BATCH_ID = re.compile(r"batch_emu[0-9a-f]{24}")
# How long in-flight requests may finish when the gateway shuts down.
SHUTDOWN_GRACE_SECONDS = 10.0
# A run's lease on its batch, and how often it is renewed (and active batches looked for).
LEASE_SECONDS = 30.0
RENEW_SECONDS = 10.0


# The runs of this process, by (blob store, provider, batch): a config reload builds a new
# adapter while the old one still runs its batches for a grace period, and both hold the
# process's leases, so the new one must leave those runs alone (it takes them over after
# the old one's close releases them).
_LIVE: dict[tuple[int, str, str], BatchRun] = {}


def _cancel_key(batch_id: str) -> str:
    return f"{batch_id}.cancel"


def _check_cancellable(state: dict[str, Any]) -> None:
    if state["result"] is not None or state["status"] in TERMINAL_STATUSES:
        message = f"Cannot cancel a batch with status '{state['status']}'."
        raise ProviderError("bad_request", message)


class EmulatedProvider(StoredFileMethods, HTTPProvider):
    def __init__(
        self,
        context: ProviderContext,
        *,
        api_key: str | None,
        limits: Limits,
        legacy_dir: Path | None = None,
    ) -> None:
        assert context.http is not None
        super().__init__(context.name, context.endpoints, context.http, api_key=api_key)
        self.state = context.state
        self.files = StoredFiles(context, "file-emu", "the emulated provider")
        self.legacy_dir = legacy_dir
        self.limits = limits
        self.throttle = Throttle(
            limits.concurrency, limits.requests_per_minute, limits.tokens_per_minute
        )
        self.shutdown_grace_seconds = SHUTDOWN_GRACE_SECONDS
        self.lease_seconds = LEASE_SECONDS
        self.renew_seconds = RENEW_SECONDS
        self._runs: dict[str, BatchRun] = {}
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[None]] = set()  # _run_done, referenced until done
        self._once = Once(self._start_up)
        self._booting: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (e.g. check-config): start on the first call
        self._booting = asyncio.create_task(self._boot())

    async def _ready(self) -> None:
        await self._once()

    async def _boot(self) -> None:
        try:
            await self._ready()
        except Exception as exc:  # the next call tries again
            log.error("emulated provider %s: start-up failed: %r", self.name, exc)

    async def _start_up(self) -> None:
        """Import an earlier version's folder once, resume what this process can claim,
        and keep looking for batches that no live process runs."""
        if self.legacy_dir is not None:
            await import_legacy_dir(self.legacy_dir, self.files, _BATCH_ID, self._import_state)
        await self._resume_active()
        if self._watcher is None and not self._closed:
            self._watcher = asyncio.create_task(self._watch())

    async def _import_state(self, state: dict[str, Any]) -> None:
        if await self.state.load(state["id"]) is not None:
            return  # imported before
        if state["result"] is None:
            assert self.legacy_dir is not None
            await import_legacy_spool(self.files.blobs, state, self.legacy_dir)
        await self._save(state)

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.renew_seconds)
            try:
                await self._renew()
                await self._resume_active()
            except Exception as exc:  # a store hiccup: the next round tries again
                log.error("emulated provider %s: lease round failed: %r", self.name, exc)

    async def _renew(self) -> None:
        """Keep this process's leases; stop a run whose lease another process took; pass
        on a cancel asked for at another replica."""
        for batch_id, run in list(self._runs.items()):
            if not await self.state.claim(batch_id, self.lease_seconds):
                log.warning("emulated batch %s: lease lost, another process runs it", batch_id)
                self._runs.pop(batch_id, None)
                self._forget(batch_id, run)
                await run.shutdown(0, flush=False)
                continue
            if run.stop_reason is None and (asked := await self.state.load(_cancel_key(batch_id))):
                await run.cancel(asked.get("cancelling_at"))

    async def _resume_active(self) -> None:
        for listed in await self.state.active():
            batch_id = listed.get("id")
            if self._closed or not isinstance(batch_id, str) or self._local_run(batch_id):
                continue
            if not _BATCH_ID.fullmatch(batch_id):
                continue
            if await self.state.claim(batch_id, self.lease_seconds):
                state = await self.state.load(batch_id)
                if self._closed or state is None or state["result"] is not None:
                    await self.state.release(batch_id)
                    continue
                log.info("emulated provider %s: resuming batch %s", self.name, batch_id)
                await self._adopt_cancel(state)
                self._start(state)

    async def _adopt_cancel(self, state: dict[str, Any]) -> None:
        """A cancel asked for while no process ran the batch."""
        if state["cancelling_at"] is None:
            asked = await self.state.load(_cancel_key(state["id"]))
            if asked is not None:
                state["cancelling_at"] = asked.get("cancelling_at") or now()

    async def _save(self, state: dict[str, Any]) -> None:
        await self.state.save(state["id"], state, active=state["result"] is None)

    async def _send(self, path: str, body: bytes) -> RawResponse:
        headers = {"content-type": "application/json"}
        return await self.request_raw("POST", path, data=body, headers=headers)

    def _live_key(self, batch_id: str) -> tuple[int, str, str]:
        return (id(self.files.blobs), self.name, batch_id)

    def _local_run(self, batch_id: str) -> BatchRun | None:
        """The run of a batch in this process: this adapter's, or an older adapter's of
        the same provider that a config reload replaced."""
        return self._runs.get(batch_id) or _LIVE.get(self._live_key(batch_id))

    def _start(self, state: dict[str, Any]) -> BatchRun:
        """Run a batch this process holds the lease of."""
        run = BatchRun(
            state,
            lines=lambda: self.files.lines(state["input_file_id"]),
            spool=PartSpool(self.files, state, lambda: self._save(state)),
            save=self._save,
            send=self._send,
            throttle=self.throttle,
            limits=self.limits,
            scrub=self.scrub,
        )
        self._runs[state["id"]] = _LIVE[self._live_key(state["id"])] = run
        run.start().add_done_callback(lambda task: self._ended(run, task))
        return run

    def _ended(self, run: BatchRun, task: asyncio.Task[None]) -> None:
        ending = asyncio.create_task(self._run_done(run, task))
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)

    def _forget(self, batch_id: str, run: BatchRun) -> None:
        if _LIVE.get(key := self._live_key(batch_id)) is run:
            del _LIVE[key]

    async def _run_done(self, run: BatchRun, task: asyncio.Task[None]) -> None:
        batch_id = run.state["id"]
        if self._runs.get(batch_id) is not run:
            return  # shut down or taken over: close() / _renew handle the lease
        del self._runs[batch_id]
        self._forget(batch_id, run)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The state stays active; a later round (here or elsewhere) resumes it.
            log.error("emulated batch %s stopped: %r", batch_id, exc)
        elif run.state["result"] is not None:
            with contextlib.suppress(Exception):
                await self.state.delete(_cancel_key(batch_id))
        with contextlib.suppress(Exception):
            await self.state.release(batch_id)

    async def _load(self, batch_id: str) -> dict[str, Any]:
        """The live state of a batch run here, else the saved one."""
        if not _BATCH_ID.fullmatch(batch_id):
            raise self.files.not_found("batch")
        run = self._local_run(batch_id)
        if run is not None:
            return run.state
        state = await self.state.load(batch_id)
        if state is None:
            raise self.files.not_found("batch")
        return state

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        await self._ready()
        if not self.supports(request.endpoint):
            message = f"This provider does not run '{request.endpoint}' batches."
            raise ProviderError("bad_request", message)
        await self.files.info(request.input_file_id)
        count, models = 0, set()
        async for _, raw in self.files.lines(request.input_file_id):
            models.add(orjson.loads(raw)["body"].get("model"))
            count += 1
        model = models.pop() if len(models) == 1 else None
        created = time.time()
        window = self.limits.completion_window_seconds
        state: dict[str, Any] = {
            "id": f"batch_emu{secrets.token_hex(12)}",
            "input_file_id": request.input_file_id,
            "endpoint": request.endpoint,
            "line_count": count,
            "model": model if isinstance(model, str) else None,
            "created": created,
            "expires_at": int(created + window),
            "status": "validating",
            # Chosen now so that finishing twice (after a crash) writes the same files.
            "result_files": [self.files.new_id(), self.files.new_id()],
            "result": None,
            "parts": [],
        }
        state |= dict.fromkeys(("in_progress_at", "finalizing_at", "cancelling_at"))
        await self._save(state)
        if await self.state.claim(state["id"], self.lease_seconds):
            self._start(state)
        return self._view(state)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        state = await self._load(upstream_id)
        if state["result"] is None and self._local_run(upstream_id) is None:
            await self._adopt_cancel(state)  # asked at this or another replica
        return self._view(state)

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        state = await self._load(upstream_id)
        _check_cancellable(state)
        run = self._local_run(upstream_id)
        if run is None and await self.state.claim(upstream_id, self.lease_seconds):
            state = await self._load(upstream_id)  # nobody runs it: finish it here
            if state["result"] is not None:
                await self.state.release(upstream_id)
                _check_cancellable(state)  # it ended meanwhile
            run = self._start(state)
        if run is not None:
            await run.cancel()
            return self._view(run.state)
        await self._adopt_cancel(state)
        if state["cancelling_at"] is None:
            state["cancelling_at"] = now()
            asked = {"id": upstream_id, "cancelling_at": state["cancelling_at"]}
            await self.state.save(_cancel_key(upstream_id), asked)
        return self._view(state)

    async def close(self) -> None:
        self._closed = True
        for task in (self._watcher, self._booting):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
        runs = list(self._runs.items())
        self._runs.clear()
        await asyncio.gather(
            *(run.shutdown(self.shutdown_grace_seconds) for _, run in runs),
            return_exceptions=True,
        )
        for batch_id, run in runs:  # flushed: now another adapter or process may take it
            self._forget(batch_id, run)
            with contextlib.suppress(Exception):
                await self.state.release(batch_id)
        if self._endings:
            await asyncio.wait(set(self._endings))
        await super().close()

    def _view(self, state: dict[str, Any]) -> UpstreamBatch:
        result = state["result"]
        if result is not None:
            status, completed, failed = state["status"], result["completed"], result["failed"]
            usage = result["usage"]
        else:  # counts advance live where the batch runs, else as of the last flush
            status = next((s for s, key in _ACTIVE if state[key] is not None), "validating")
            run = self._local_run(state["id"])
            if run is not None:
                spool = run.spool
                completed, failed, usage = spool.completed, spool.failed, spool.tally.usage()
            else:
                saved = state.get("progress") or {}
                completed, failed = saved.get("completed", 0), saved.get("failed", 0)
                usage = saved.get("usage")
        return UpstreamBatch(
            id=state["id"],
            status=status,
            output_file_id=result["output_file_id"] if result else None,
            error_file_id=result["error_file_id"] if result else None,
            model=state["model"],
            request_counts=RequestCounts(state["line_count"], completed, failed),
            usage=usage,
            timestamps={name: state.get(name) for name in TIMESTAMP_FIELDS},
        )


# Status of an unfinished batch: the first of these whose timestamp is set.
_ACTIVE = (
    ("cancelling", "cancelling_at"),
    ("finalizing", "finalizing_at"),
    ("in_progress", "in_progress_at"),
)


class EmulatedProviderConfig(RemoteConfig):
    """A synchronous OpenAI-compatible server (vLLM, Ollama, ...) run as a batch by the
    gateway itself. `base_url` includes the API prefix (`http://localhost:8000/v1`)."""

    key_policy: ClassVar[Literal["required", "optional", "none"]] = "optional"

    type: Literal["emulated"]
    endpoints: tuple[Endpoint, ...] | None = (
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
    )
    concurrency: int = Field(8, ge=1, le=256)  # the HTTP client pools 256 connections
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_retries: int = Field(5, ge=0)
    retry_backoff_seconds: float = Field(1.0, ge=0)
    completion_window_seconds: float = Field(86_400, gt=0)
    # A synchronous model call can take minutes.
    read_timeout_seconds: float = Field(600.0, gt=0)
    # Only the folder an earlier version kept its files in: imported once, then renamed.
    dir: Path = Path("./data/emulated")


def build(context: ProviderContext, config: EmulatedProviderConfig) -> EmulatedProvider:
    return EmulatedProvider(
        context,
        api_key=config.secret_key(),
        legacy_dir=config.dir,
        limits=Limits(
            concurrency=config.concurrency,
            requests_per_minute=config.requests_per_minute,
            tokens_per_minute=config.tokens_per_minute,
            max_retries=config.max_retries,
            retry_backoff_seconds=config.retry_backoff_seconds,
            completion_window_seconds=config.completion_window_seconds,
        ),
    )


TYPE = ProviderType("emulated", EmulatedProviderConfig, build)
