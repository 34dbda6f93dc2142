"""`type: anthropic`: OpenAI chat-completions batches run as Anthropic Message Batches.

Anthropic has no Files step, so `upload_file` keeps a copy of the validated input in the
adapter's `dir`, and `create_batch` translates it line by line (`anthropic_params`) into
a request body spooled to disk and streamed to `POST /v1/messages/batches`; a line that
cannot be translated rejects the whole batch with its line number.

Results are spooled, not passed through: once Anthropic reports `ended`, `results_url` is
streamed, translated line by line (`anthropic_results`) and written once into an output
and an error file in `dir`. Passing the stream through on each download would not work
here: the gateway needs each file's size and the final counts and usage before it shows
the batch as finished, one upstream stream feeds two files, and Anthropic keeps results
for 29 days while the gateway's output files may be kept longer. While the files are
being written the batch reports `finalizing` (`cancelling` for a cancelled batch).

On disk: input and result files via `LocalFiles` (`file-anth…`), and `<msgbatch id>.json`
per batch: line count, model, the custom_id map (when ids had to be renamed) and, once
finalized, the result.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field

from providers.anthropic_params import TranslationError, anthropic_custom_ids, chat_to_params
from providers.anthropic_results import (
    MessageBatch,
    parse_message_batch,
    result_to_line,
)
from providers.base import (
    CLOCK_SKEW_SECONDS,
    BatchRequest,
    Lookup,
    ProviderError,
    RequestCounts,
    UpstreamBatch,
    now,
)
from providers.config import HttpUrl, RemoteConfig
from providers.context import ProviderContext, ProviderType
from providers.http import HTTPProvider, iter_lines, path_id
from providers.localfiles import LocalFileMethods, LocalFiles, ResultSpool, input_lines, write_json
from providers.transport import HTTPSettings

__all__ = ["AnthropicProvider", "write_request_body"]

log = logging.getLogger("providers.anthropic")

CHAT = "/v1/chat/completions"
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_BATCHES = "/v1/messages/batches"


def write_request_body(
    source: Path, target: Path, default_max_tokens: int | None
) -> dict[str, Any]:
    """Translate an input file into a Create body at `target`; returns the facts the batch
    keeps (line count, model, original custom_ids when they had to be renamed)."""
    custom_ids = [orjson.loads(raw)["custom_id"] for _, raw in input_lines(source)]
    renamed = anthropic_custom_ids(custom_ids)
    models = set()
    with target.open("wb") as out:
        out.write(b'{"requests":[')
        for index, (number, raw) in enumerate(input_lines(source)):
            body = orjson.loads(raw).get("body")
            try:
                params = chat_to_params(body or {}, default_max_tokens=default_max_tokens)
            except TranslationError as exc:
                message = f"Line {number}: {exc}"
                raise ProviderError("bad_request", message, code="invalid_line") from None
            models.add(params["model"])
            request = {"custom_id": (renamed or custom_ids)[index], "params": params}
            out.write((b"," if index else b"") + orjson.dumps(request))
        out.write(b"]}")
    return {
        "line_count": len(custom_ids),
        "model": models.pop() if len(models) == 1 else None,
        "custom_ids": custom_ids if renamed else None,
    }


def _original_id(custom_id: Any, originals: list[str] | None) -> Any:
    """Undo the `line-<index>` renaming done at create."""
    if originals is None or not isinstance(custom_id, str):
        return custom_id
    index = custom_id.removeprefix("line-")
    return originals[int(index)] if index.isdigit() and int(index) < len(originals) else custom_id


class AnthropicProvider(LocalFileMethods, HTTPProvider):
    error_code_key = "type"  # `{"type": "error", "error": {"type", "message"}}`
    key_header, key_prefix = "x-api-key", ""
    # Message Batches carry no metadata: a create of unknown outcome is recognised by the
    # batches made since it began with its request count (`candidates`).
    lookup: Lookup = "count"

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        *,
        api_key: str,
        anthropic_version: str,
        directory: Path,
        default_max_tokens: int | None = None,
        finalize_wait_seconds: float = 5.0,
    ) -> None:
        headers = {"anthropic-version": anthropic_version}
        super().__init__(name, endpoints & {CHAT}, http, api_key=api_key, headers=headers)
        self.directory = Path(directory)
        self.files = LocalFiles(self.directory, "file-anth", "the anthropic adapter")
        self.default_max_tokens = default_max_tokens
        # How long a retrieve waits for result files before answering `finalizing`.
        self.finalize_wait_seconds = finalize_wait_seconds
        self._finalizing: dict[str, tuple[asyncio.Task[dict[str, Any]], int]] = {}

    def _state_path(self, batch_id: str) -> Path:
        if not _BATCH_ID.fullmatch(batch_id):
            raise self.files.not_found("batch")
        return self.directory / f"{batch_id}.json"

    async def _remote(self, method: str, path: str, **kwargs: Any) -> MessageBatch:
        data = await self.request_json(method, path, **kwargs)
        try:
            return parse_message_batch(data)
        except ValueError:
            raise ProviderError("retryable", "the provider sent an unexpected batch") from None

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        if not self.supports(request.endpoint):
            message = f"Anthropic runs only {CHAT} batches, not '{request.endpoint}'."
            raise ProviderError("bad_request", message)
        await self.files.info(request.input_file_id)
        source = self.files.path(request.input_file_id)
        spool = self.directory / f"create-{secrets.token_hex(8)}.json.part"
        try:
            facts = await asyncio.to_thread(
                write_request_body, source, spool, self.default_max_tokens
            )
            with spool.open("rb") as body:
                headers = {"content-type": "application/json"}
                batch = await self._remote("POST", _BATCHES, data=body, headers=headers)
        finally:
            spool.unlink(missing_ok=True)
        state = {"id": batch.id, "input_file_id": request.input_file_id, **facts, "result": None}
        write_json(self._state_path(batch.id), state)
        return self._running(state, batch)

    async def candidates(self, request: BatchRequest, since: int) -> list[UpstreamBatch]:
        await self.files.info(request.input_file_id)
        source = self.files.path(request.input_file_id)
        lines = await asyncio.to_thread(lambda: sum(1 for _ in input_lines(source)))
        oldest = since - CLOCK_SKEW_SECONDS
        found: list[UpstreamBatch] = []
        after: str | None = None
        while True:
            query = {"limit": "100", **({"after_id": after} if after else {})}
            page = await self.request_json("GET", _BATCHES, params=query)
            data = page.get("data")
            if not isinstance(data, list):
                raise ProviderError("retryable", "the provider sent an unreadable list")
            for item in data:
                try:
                    batch = parse_message_batch(item)
                except ValueError:
                    continue
                if batch.created_at is not None and batch.created_at < oldest:
                    return found
                if sum(batch.counts.values()) == lines:
                    found.append(UpstreamBatch(id=batch.id, status=batch.status()))
            after = page.get("last_id") if isinstance(page.get("last_id"), str) else None
            if not page.get("has_more") or not data:
                return found
            if after is None:
                raise ProviderError("retryable", "the provider sent a list without a cursor")

    async def adopt(self, upstream_id: str, request: BatchRequest) -> UpstreamBatch:
        """Record what `create_batch` would have, for a batch its lost answer made."""
        path = self._state_path(upstream_id)
        if not path.exists():
            facts = await asyncio.to_thread(self._facts, request.input_file_id)
            state = {"id": upstream_id, "input_file_id": request.input_file_id, **facts}
            write_json(path, state | {"result": None})
        return await self.get_batch(upstream_id)

    def _facts(self, input_file_id: str) -> dict[str, Any]:
        spool = self.directory / f"adopt-{secrets.token_hex(8)}.json.part"
        try:
            return write_request_body(
                self.files.path(input_file_id), spool, self.default_max_tokens
            )
        finally:
            spool.unlink(missing_ok=True)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        state = self.files.read_state(self._state_path(upstream_id), "batch")
        if state["result"] is not None:
            return self._finished(state, state["result"])
        batch = await self._remote("GET", f"{_BATCHES}/{path_id(upstream_id)}")
        return await self._view(state, batch)

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        state = self.files.read_state(self._state_path(upstream_id), "batch")
        if state["result"] is not None:
            status = state["result"]["status"]
            raise ProviderError("bad_request", f"Cannot cancel a batch with status '{status}'.")
        batch = await self._remote("POST", f"{_BATCHES}/{path_id(upstream_id)}/cancel")
        return await self._view(state, batch)

    async def close(self) -> None:
        tasks = [task for task, _ in self._finalizing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().close()

    async def _view(self, state: dict[str, Any], batch: MessageBatch) -> UpstreamBatch:
        if not batch.ended:
            return self._running(state, batch)
        entry = self._finalizing.get(batch.id)
        if entry is None:
            entry = (asyncio.create_task(self._finalize(state, batch)), now())
            self._finalizing[batch.id] = entry
            entry[0].add_done_callback(lambda task: self._finalized(batch.id, task))
        task, started = entry
        await asyncio.wait({task}, timeout=self.finalize_wait_seconds)
        if task.done():
            return self._finished(state, task.result())
        view = self._running(state, batch)
        view.status = "cancelling" if batch.status() == "cancelled" else "finalizing"
        view.timestamps["finalizing_at"] = started
        return view

    def _finalized(self, batch_id: str, task: asyncio.Task[dict[str, Any]]) -> None:
        """Forget a finished finalization; a failed one is retried by the next retrieve."""
        if self._finalizing.get(batch_id, (None, 0))[0] is task:
            del self._finalizing[batch_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("anthropic batch results could not be fetched: %s", exc)

    async def _finalize(self, state: dict[str, Any], batch: MessageBatch) -> dict[str, Any]:
        """Stream results_url into the output/error files; record the result in the state."""
        started = now()
        spool = ResultSpool(self.files, batch.id)
        created = batch.ended_at or started
        with spool.writing():
            async with self.stream(self._results_path(batch)) as chunks:
                async for raw in iter_lines(chunks):
                    try:
                        item = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        raise ProviderError("retryable", "the results are not JSONL") from None
                    custom_id = _original_id(item.get("custom_id"), state["custom_ids"])
                    line, _ = result_to_line(
                        item, custom_id=custom_id, seed=batch.id, created=created
                    )
                    spool.add(line)
        result = spool.publish() | {"status": batch.status(), "finalizing_at": started}
        result |= {"finished_at": now(), "created_at": batch.created_at}
        result |= {"expires_at": batch.expires_at, "cancelling_at": batch.cancel_initiated_at}
        state["result"] = result
        write_json(self._state_path(batch.id), state)
        return result

    def _results_path(self, batch: MessageBatch) -> str:
        """Follow results_url only on our own base URL: the key must not go elsewhere."""
        url = batch.results_url or ""
        if url.startswith(self.base_url + "/"):
            return url.removeprefix(self.base_url)
        return f"{_BATCHES}/{path_id(batch.id)}/results"

    def _running(self, state: dict[str, Any], batch: MessageBatch) -> UpstreamBatch:
        counts = batch.request_counts()
        timestamps = {
            "expires_at": batch.expires_at,
            "in_progress_at": batch.created_at,  # Anthropic starts at once
            "cancelling_at": batch.cancel_initiated_at,
        }
        return UpstreamBatch(
            id=batch.id,
            status=batch.status(),
            model=state["model"],
            request_counts=RequestCounts(state["line_count"], counts.completed, counts.failed),
            timestamps=timestamps,
        )

    def _finished(self, state: dict[str, Any], result: dict[str, Any]) -> UpstreamBatch:
        status = result["status"]
        timestamps = {
            "expires_at": result["expires_at"],
            "in_progress_at": result["created_at"],
            "cancelling_at": result["cancelling_at"],
            "finalizing_at": result["finalizing_at"],
            f"{status}_at": result["finished_at"],
        }
        return UpstreamBatch(
            id=state["id"],
            status=status,
            output_file_id=result["output_file_id"],
            error_file_id=result["error_file_id"],
            model=state["model"],
            request_counts=RequestCounts(
                state["line_count"], result["completed"], result["failed"]
            ),
            usage=result["usage"],
            timestamps=timestamps,
        )


class AnthropicProviderConfig(RemoteConfig):
    """Anthropic Message Batches; runs `/v1/chat/completions` batches only."""

    type: Literal["anthropic"]
    endpoints: tuple[Literal["/v1/chat/completions"], ...] | None = ("/v1/chat/completions",)
    base_url: HttpUrl = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    # Anthropic requires max_tokens; used for lines that set neither max_tokens nor
    # max_completion_tokens (without it such lines are rejected at create).
    default_max_tokens: int | None = Field(None, ge=1)
    dir: Path = Path("./data/anthropic")


def build(context: ProviderContext, config: AnthropicProviderConfig) -> AnthropicProvider:
    assert context.http is not None and (key := config.secret_key()) is not None
    return AnthropicProvider(
        context.name,
        context.endpoints,
        context.http,
        api_key=key,
        anthropic_version=config.anthropic_version,
        directory=config.dir,
        default_max_tokens=config.default_max_tokens,
    )


TYPE = ProviderType("anthropic", AnthropicProviderConfig, build)
