"""`type: emulated`: the gateway runs the batch itself against a synchronous
OpenAI-compatible API (a local vLLM or Ollama server, or any hosted chat/embeddings API).

Each input line is POSTed to `base_url` + the line's `url` without its `/v1` prefix, so
`base_url` names the API root the way OpenAI clients expect it
(`http://localhost:8000/v1` -> `http://localhost:8000/v1/chat/completions`). The body is
sent as written; any JSON endpoint works, and the config lists which ones routing may send
here (chat, embeddings and completions by default).

A background task per active batch (`emulated_run.BatchRun`) does the work; they share one
`Throttle` (concurrency, requests and tokens per minute), because the limits belong to the
upstream server. Everything lives on disk under `dir`: input copies and result files via
`LocalFiles` (`file-emu…`), `<batch id>.json` per batch (atomic), and the result files
being appended (`<batch id>.output.part` / `.error.part`) until the batch ends. Batches
found unfinished on disk are resumed as soon as the provider exists inside a running event
loop (else on its first call), and `close()` stops them so the next process picks them up.
"""

from __future__ import annotations

import asyncio
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
)
from providers.config import Endpoint, RemoteConfig
from providers.context import ProviderContext, ProviderType
from providers.emulated_run import BatchRun, Limits
from providers.http import HTTPProvider, RawResponse
from providers.localfiles import (
    LocalFileMethods,
    LocalFiles,
    ResultSpool,
    input_lines,
    read_json,
    write_json,
)
from providers.ratelimit import Throttle
from providers.transport import HTTPSettings

__all__ = ["EmulatedProvider", "Limits"]

log = logging.getLogger("providers.emulated")

_BATCH_ID = re.compile(r"batch_emu[0-9a-f]{24}")
_STATE_SUFFIX = ".json"
# How long in-flight requests may finish when the gateway shuts down.
SHUTDOWN_GRACE_SECONDS = 10.0


def _scan(path: Path) -> tuple[int, str | None]:
    """(line count, the model when every line uses the same one)."""
    count, models = 0, set()
    for _, raw in input_lines(path):
        models.add(orjson.loads(raw)["body"].get("model"))
        count += 1
    model = models.pop() if len(models) == 1 else None
    return count, model if isinstance(model, str) else None


class EmulatedProvider(LocalFileMethods, HTTPProvider):
    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        *,
        api_key: str | None,
        directory: Path,
        limits: Limits,
    ) -> None:
        super().__init__(name, endpoints, http, api_key=api_key)
        self.directory = Path(directory)
        self.files = LocalFiles(self.directory, "file-emu", "the emulated provider")
        self.limits = limits
        self.throttle = Throttle(
            limits.concurrency, limits.requests_per_minute, limits.tokens_per_minute
        )
        self.shutdown_grace_seconds = SHUTDOWN_GRACE_SECONDS
        self._runs: dict[str, BatchRun] = {}
        self._resuming: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (e.g. check-config): resume on the first call
        self._resuming = asyncio.create_task(self._resume_all())

    async def _ready(self) -> None:
        if self._resuming is None:
            self._resuming = asyncio.create_task(self._resume_all())
        await asyncio.shield(self._resuming)

    async def _resume_all(self) -> None:
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob(f"batch_emu*{_STATE_SUFFIX}")):
            state = read_json(path)
            if state is not None and state["result"] is None:
                log.info("emulated provider %s: resuming batch %s", self.name, state["id"])
                self._start(state)

    def _state_path(self, batch_id: str) -> Path:
        if not _BATCH_ID.fullmatch(batch_id):
            raise self.files.not_found("batch")
        return self.directory / f"{batch_id}{_STATE_SUFFIX}"

    def _save(self, state: dict[str, Any]) -> None:
        write_json(self._state_path(state["id"]), state)

    async def _send(self, path: str, body: bytes) -> RawResponse:
        headers = {"content-type": "application/json"}
        return await self.request_raw("POST", path, data=body, headers=headers)

    def _start(self, state: dict[str, Any]) -> BatchRun:
        run = BatchRun(
            state,
            input_path=self.files.path(state["input_file_id"]),
            spool=ResultSpool(
                self.files, state["id"], file_ids=state["result_files"], durable=True
            ),
            save=self._save,
            send=self._send,
            throttle=self.throttle,
            limits=self.limits,
            scrub=self.scrub,
        )
        self._runs[state["id"]] = run
        run.start().add_done_callback(lambda task: self._run_done(run, task))
        return run

    def _run_done(self, run: BatchRun, task: asyncio.Task[None]) -> None:
        if self._runs.get(run.state["id"]) is run:
            del self._runs[run.state["id"]]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # State stays unfinished on disk; the next retrieve or restart resumes it.
            log.error("emulated batch %s stopped: %r", run.state["id"], exc)

    def _state(self, batch_id: str) -> dict[str, Any]:
        """The live state of a running batch, else what is on disk (restarting a run that
        died unexpectedly)."""
        run = self._runs.get(batch_id)
        if run is not None:
            return run.state
        state = self.files.read_state(self._state_path(batch_id), "batch")
        if state["result"] is None:
            return self._start(state).state
        return state

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        await self._ready()
        if not self.supports(request.endpoint):
            message = f"This provider does not run '{request.endpoint}' batches."
            raise ProviderError("bad_request", message)
        await self.files.info(request.input_file_id)
        count, model = await asyncio.to_thread(_scan, self.files.path(request.input_file_id))
        created = time.time()
        window = self.limits.completion_window_seconds
        state: dict[str, Any] = {
            "id": f"batch_emu{secrets.token_hex(12)}",
            "input_file_id": request.input_file_id,
            "endpoint": request.endpoint,
            "line_count": count,
            "model": model,
            "created": created,
            "expires_at": int(created + window),
            "status": "validating",
            # Chosen now so a restart finds the results written so far.
            "result_files": [self.files.new_id(), self.files.new_id()],
            "result": None,
        }
        state |= dict.fromkeys(("in_progress_at", "finalizing_at", "cancelling_at"))
        self._save(state)
        return self._view(self._start(state).state)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        return self._view(self._state(upstream_id))

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        state = self._state(upstream_id)
        if state["status"] in TERMINAL_STATUSES:
            message = f"Cannot cancel a batch with status '{state['status']}'."
            raise ProviderError("bad_request", message)
        self._runs[upstream_id].cancel()
        return self._view(state)

    async def close(self) -> None:
        if self._resuming is not None and not self._resuming.done():
            self._resuming.cancel()
        runs = list(self._runs.values())
        await asyncio.gather(*(run.shutdown(self.shutdown_grace_seconds) for run in runs))
        await super().close()

    def _view(self, state: dict[str, Any]) -> UpstreamBatch:
        result = state["result"]
        if result is not None:
            status, completed, failed = state["status"], result["completed"], result["failed"]
            usage = result["usage"]
        else:  # counts and usage advance live, line by line
            status = next((s for s, key in _ACTIVE if state[key] is not None), "validating")
            run = self._runs.get(state["id"])
            spool = run.spool if run is not None else None
            completed, failed = (spool.completed, spool.failed) if spool else (0, 0)
            usage = spool.tally.usage() if spool else None
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
    dir: Path = Path("./data/emulated")


def build(context: ProviderContext, config: EmulatedProviderConfig) -> EmulatedProvider:
    assert context.http is not None
    return EmulatedProvider(
        context.name,
        context.endpoints,
        context.http,
        api_key=config.secret_key(),
        directory=config.dir,
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
