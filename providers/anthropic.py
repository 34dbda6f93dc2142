"""`type: anthropic`: OpenAI chat-completions batches run as Anthropic Message Batches.

Anthropic has no Files step, so `upload_file` keeps a copy of the validated input (a blob
of the gateway's blob store), and `create_batch` translates it line by line
(`anthropic_params`) into the body of `POST /v1/messages/batches`, streamed as it is
made: a first pass checks every line and sizes the body (a line that cannot be translated
rejects the whole batch with its line number before anything is sent), the second sends
it with that Content-Length. Nothing goes to local disk.

Results are spooled, not passed through: once Anthropic reports `ended`, `results_url` is
streamed, translated line by line (`anthropic_results`) and written once into an output
and an error file (blobs). Passing the stream through on each download would not work
here: the gateway needs each file's size and the final counts and usage before it shows
the batch as finished, one upstream stream feeds two files, and Anthropic keeps results
for 29 days while the gateway's output files may be kept longer. While the files are
being written the batch reports `finalizing` (`cancelling` for a cancelled batch).

Kept in the gateway's stores: input and result files via `providers.stored_files`
(`file-anth…`), and per batch, under its id, the line count, model, the custom_id map
(when ids had to be renamed) and, once finalized, the result. `dir` is only the folder
earlier versions kept all this in; its content is imported by the first call.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from aiohttp.payload import AsyncIterablePayload
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
from providers.results import stable_hex
from providers.stored_files import (
    ResultSpool,
    StoredFileMethods,
    StoredFiles,
)

__all__ = ["AnthropicProvider", "BodyPlan"]

log = logging.getLogger("providers.anthropic")

CHAT = "/v1/chat/completions"
_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_BATCHES = "/v1/messages/batches"
# The body is sent in chunks of about this size.
CHUNK = 256 * 1024
_OPEN, _CLOSE = b'{"requests":[', b"]}"
_ID_HEAD, _PARAMS_HEAD, _TAIL = b'{"custom_id":', b',"params":', b"}"


def _request(custom_id: str, params: bytes) -> bytes:
    """One entry of `requests`, serialized by hand so its size is known from its parts."""
    return _ID_HEAD + orjson.dumps(custom_id) + _PARAMS_HEAD + params + _TAIL


class BodyPlan:
    """What the first pass over an input file learns: the facts a batch keeps (line
    count, model, original custom_ids when they had to be renamed), the ids sent, and
    the exact size of the Create body."""

    def __init__(self, custom_ids: list[str], models: set[str], params_bytes: int) -> None:
        renamed = anthropic_custom_ids(custom_ids)
        self.sent_ids = renamed or custom_ids
        self.facts = {
            "line_count": len(custom_ids),
            "model": next(iter(models)) if len(models) == 1 else None,
            "custom_ids": custom_ids if renamed else None,
        }
        entries = sum(
            len(_ID_HEAD) + len(orjson.dumps(c)) + len(_PARAMS_HEAD) + len(_TAIL)
            for c in self.sent_ids
        )
        commas = max(0, len(self.sent_ids) - 1)
        self.size = len(_OPEN) + entries + params_bytes + commas + len(_CLOSE)


def _original_id(custom_id: Any, originals: list[str] | None) -> Any:
    """Undo the `line-<index>` renaming done at create."""
    if originals is None or not isinstance(custom_id, str):
        return custom_id
    index = custom_id.removeprefix("line-")
    return originals[int(index)] if index.isdigit() and int(index) < len(originals) else custom_id


class AnthropicProvider(StoredFileMethods, HTTPProvider):
    error_code_key = "type"  # `{"type": "error", "error": {"type", "message"}}`
    key_header, key_prefix = "x-api-key", ""
    id_patterns = ((re.compile(r"\bmsgbatch_[A-Za-z0-9_-]+"), "[upstream id]"),)
    # Message Batches carry no metadata: a create of unknown outcome is recognised by the
    # batches made since it began with its request count (`candidates`).
    lookup: Lookup = "count"
    legacy_states = _BATCH_ID

    def __init__(
        self,
        context: ProviderContext,
        *,
        api_key: str,
        anthropic_version: str,
        legacy_dir: Path | None = None,
        default_max_tokens: int | None = None,
        finalize_wait_seconds: float = 5.0,
    ) -> None:
        assert context.http is not None
        headers = {"anthropic-version": anthropic_version}
        super().__init__(
            context.name, context.endpoints & {CHAT}, context.http, api_key=api_key, headers=headers
        )
        self.state = context.state
        self.files = StoredFiles(context, "file-anth", "the anthropic adapter")
        self.legacy_dir = legacy_dir
        self.anthropic_version = anthropic_version
        self.default_max_tokens = default_max_tokens
        # How long a retrieve waits for result files before answering `finalizing`.
        self.finalize_wait_seconds = finalize_wait_seconds
        self._finalizing: dict[str, tuple[asyncio.Task[dict[str, Any]], int]] = {}

    async def _adopt_legacy(self, state: dict[str, Any]) -> None:
        """A `<msgbatch id>.json` of the legacy folder, stored under its id."""
        batch_id = state.get("id")
        if isinstance(batch_id, str) and await self.state.load(batch_id) is None:
            await self.state.save(batch_id, state)

    async def _load(self, batch_id: str) -> dict[str, Any]:
        """A batch's state; ids of other shapes (our own file ids too) are not found."""
        state = None
        if _BATCH_ID.fullmatch(batch_id) and not self.files.pattern.fullmatch(batch_id):
            state = await self.state.load(batch_id)
        if state is None:
            raise self.files.not_found("batch")
        return state

    def _params(self, number: int, raw: bytes) -> tuple[str, dict[str, Any]]:
        """(custom_id, params) of one input line; a line that cannot be translated
        refuses the whole batch."""
        line = orjson.loads(raw)
        try:
            params = chat_to_params(
                line.get("body") or {},
                default_max_tokens=self.default_max_tokens,
                anthropic_version=self.anthropic_version,
            )
        except TranslationError as exc:
            message = f"Line {number}: {exc}"
            raise ProviderError("bad_request", message, code="invalid_line") from None
        return line["custom_id"], params

    async def _plan(self, input_file_id: str) -> BodyPlan:
        """The first pass: check every line and learn what the body will be."""
        custom_ids: list[str] = []
        models: set[str] = set()
        params_bytes = 0
        async for number, raw in self.files.lines(input_file_id):
            custom_id, params = self._params(number, raw)
            custom_ids.append(custom_id)
            models.add(params["model"])
            params_bytes += len(orjson.dumps(params))
        return BodyPlan(custom_ids, models, params_bytes)

    async def _body(self, input_file_id: str, plan: BodyPlan) -> AsyncIterator[bytes]:
        """The second pass: the Create body, `plan.size` bytes in chunks."""
        out = bytearray(_OPEN)
        index = 0
        async for number, raw in self.files.lines(input_file_id):
            _, params = self._params(number, raw)
            out += (b"," if index else b"") + _request(plan.sent_ids[index], orjson.dumps(params))
            index += 1
            if len(out) >= CHUNK:
                yield bytes(out)
                out.clear()
        yield bytes(out + _CLOSE)

    async def _remote(self, method: str, path: str, **kwargs: Any) -> MessageBatch:
        data = await self.request_json(method, path, **kwargs)
        try:
            return parse_message_batch(data)
        except ValueError:
            raise ProviderError("retryable", "the provider sent an unexpected batch") from None

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        await self._ready()
        if not self.supports(request.endpoint):
            message = f"Anthropic runs only {CHAT} batches, not '{request.endpoint}'."
            raise ProviderError("bad_request", message)
        await self.files.info(request.input_file_id)
        plan = await self._plan(request.input_file_id)
        headers = {"content-type": "application/json", "content-length": str(plan.size)}
        # aiohttp streams any async iterable; `request_raw`'s annotation names the file case.
        body = AsyncIterablePayload(self._body(request.input_file_id, plan))
        batch = await self._remote("POST", _BATCHES, data=body, headers=headers)
        state = {"id": batch.id, "input_file_id": request.input_file_id, **plan.facts}
        state["result"] = None
        await self.state.save(batch.id, state)
        return self._running(state, batch)

    async def candidates(self, request: BatchRequest, since: int) -> list[UpstreamBatch]:
        await self._ready()
        await self.files.info(request.input_file_id)
        lines = 0
        async for _ in self.files.lines(request.input_file_id):
            lines += 1
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
        await self._ready()
        if not _BATCH_ID.fullmatch(upstream_id):
            raise self.files.not_found("batch")
        if await self.state.load(upstream_id) is None:
            plan = await self._plan(request.input_file_id)
            state = {"id": upstream_id, "input_file_id": request.input_file_id, **plan.facts}
            await self.state.save(upstream_id, state | {"result": None})
        return await self.get_batch(upstream_id)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        state = await self._load(upstream_id)
        if state["result"] is not None:
            return self._finished(state, state["result"])
        batch = await self._remote("GET", f"{_BATCHES}/{path_id(upstream_id)}")
        return await self._view(state, batch)

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        state = await self._load(upstream_id)
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

    def _result_ids(self, batch_id: str) -> tuple[str, str]:
        """The result files' ids, derived from the batch: replicas finalizing the same
        batch at once write the same files, so neither leaves a stray pair behind."""
        return tuple(  # type: ignore[return-value]
            f"{self.files.prefix}{stable_hex(self.name, batch_id, kind)}"
            for kind in ("output", "error")
        )

    async def _finalize(self, state: dict[str, Any], batch: MessageBatch) -> dict[str, Any]:
        """Stream results_url into the output/error files; record the result in the state."""
        started = now()
        created = batch.ended_at or started
        async with ResultSpool(self.files, batch.id, file_ids=self._result_ids(batch.id)) as spool:
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
                    await spool.add(line)
            result = await spool.publish()
        result |= {"status": batch.status(), "finalizing_at": started}
        result |= {"finished_at": now(), "created_at": batch.created_at}
        result |= {"expires_at": batch.expires_at, "cancelling_at": batch.cancel_initiated_at}
        state["result"] = result
        await self.state.save(batch.id, state)
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

    # Message Batches: 100,000 requests or 256 MB.
    batch_limits: ClassVar[tuple[int, int]] = (100_000, 256 * 1000 * 1000)

    type: Literal["anthropic"]
    endpoints: tuple[Literal["/v1/chat/completions"], ...] | None = ("/v1/chat/completions",)
    base_url: HttpUrl = "https://api.anthropic.com"
    # A dated API version; from 2026-10-21 sampling parameters are refused (anthropic_params).
    anthropic_version: str = Field("2023-06-01", pattern=r"^\d{4}-\d{2}-\d{2}$")
    # Anthropic requires max_tokens; used for lines that set neither max_tokens nor
    # max_completion_tokens (without it such lines are rejected at create).
    default_max_tokens: int | None = Field(None, ge=1)
    # Where earlier versions kept the adapter's files: imported once, then renamed.
    dir: Path = Path("./data/anthropic")


def build(context: ProviderContext, config: AnthropicProviderConfig) -> AnthropicProvider:
    assert (key := config.secret_key()) is not None
    return AnthropicProvider(
        context,
        api_key=key,
        anthropic_version=config.anthropic_version,
        legacy_dir=config.dir,
        default_max_tokens=config.default_max_tokens,
    )


TYPE = ProviderType("anthropic", AnthropicProviderConfig, build)
