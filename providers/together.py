"""`type: together`: Together AI's Batch API, translated to OpenAI's.

Sources: docs.together.ai (batch guide, "Manage batches", API reference for
`POST /files/upload`, `/batches`, `/batches/{id}`, `/batches/{id}/cancel`; its OpenAPI
spec, togethercomputer/openapi) and the official SDK (togethercomputer/together-python,
`resources/batch.py`, `types/batch.py`, `types/files.py`). Where they disagree, the
current docs win:

- Upload: the docs' `POST /files/upload` (multipart `file`, `file_name`, `purpose`,
  `file_type`), not the v1 SDK's `POST /files` redirect to a presigned URL + preprocess.
  Together keeps `file_name`, so the upload is named after the gateway file.
- Statuses: the docs' six UPPERCASE ones; the v1 SDK also knows `CANCELING`, mapped to
  `cancelling`. Unknown ones read as `in_progress` (a poll goes on; nothing ends on a guess).
- Answers: create is wrapped, `{"job": {...}, "warning": ...}`; retrieve and cancel give
  the job bare, list a bare JSON array without paging (docs and SDK agree). Batch errors
  are `{"error": "<text>"}`, file errors OpenAI's envelope; `HTTPProvider` reads both.

What Together lacks, and what the adapter makes of it:

- No request counts, only `progress` (percent). The upload records the file's line count
  in the provider state (keyed by Together's file id), so `request_counts` is an estimate
  while a job runs: `completed = floor(progress% x total)`, `failed = 0` (Together counts no
  failures). Once it ended, its error file's lines are counted (once, kept in the state
  under the job's id): `failed` = those, `completed` = processed less those. Without a
  known total (state lost) no counts are reported and the gateway keeps its own.
- No batch metadata (the create body has none, the job returns none), so no tag lookup:
  `lookup = "count"`. A create of unknown outcome is recognised by the jobs made since it
  began from *the same uploaded file* (`input_file_id`), which is narrower than a request
  count and as sound: the gateway uploads a file once per provider, so every such job has
  the same requests, and `gateway.creates` decides between rival creates as for counts.
  "none" would have taken a lost-but-made create for not made, so a retry made a second.
- Timestamps are ISO 8601 strings (turned into Unix seconds): `job_deadline` is
  `expires_at`; `completed_at` is when the job ended, whichever way it ended.
- Input lines are `{custom_id, body}` (`custom_id` at most 64 characters); result lines are
  `{custom_id, response: {status_code, body}}` and `{custom_id, error: {message, code}}`,
  rewritten to OpenAI's while they stream (the gateway's `result_lines` then gives ids).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, ClassVar, Literal

import aiohttp
import orjson

from providers.base import (
    CLOCK_SKEW_SECONDS,
    GATEWAY_FILE_NAME,
    BatchRequest,
    ByteStream,
    InputFile,
    Lookup,
    ProviderError,
    RequestCounts,
    UpstreamBatch,
    UpstreamFile,
)
from providers.config import HttpUrl, RemoteConfig
from providers.context import ProviderContext, ProviderType, StateStore
from providers.http import UUID_ID, HTTPProvider, iter_lines, path_id
from providers.lines import LineError, rewritten
from providers.openai_compat import parse_file
from providers.results import dumps, error_line, response_line, stable_hex
from providers.transport import HTTPSettings

__all__ = [
    "SUPPORTED_ENDPOINTS",
    "TYPE",
    "TogetherProvider",
    "TogetherProviderConfig",
    "input_line",
    "parse_job",
    "result_line",
    "unix_time",
]

# The endpoints Together's batch docs and SDK (`BatchEndpoint`) name.
SUPPORTED_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})
PURPOSE = "batch-api"
MAX_CUSTOM_ID = 64

STATUSES: dict[str, str] = {
    "VALIDATING": "validating",
    "IN_PROGRESS": "in_progress",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "EXPIRED": "expired",
    "CANCELLED": "cancelled",
    "CANCELING": "cancelling",
    "CANCELLING": "cancelling",
}
# Which OpenAI timestamp Together's `completed_at` is, per status it ended in.
_ENDED_AT = {
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelled": "cancelled_at",
}
# Together's own ids: batch ids are UUIDs, users `user_...` (file ids are scrubbed already).
_TOGETHER_IDS = (UUID_ID, (re.compile(r"\buser_[A-Za-z0-9]+"), "[upstream id]"))


def unix_time(value: Any) -> int | None:
    """An ISO 8601 time (Together's `...Z` strings) as Unix seconds; None if not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.year < 2001:  # no zone: unknown; 0001-01-01: unset
        return None
    return int(parsed.timestamp())


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def estimate_counts(
    progress: Any, total: int | None, status: str, failed: int | None = None
) -> RequestCounts | None:
    """`request_counts` from Together's percentage, when the total is known: the share
    processed (all of it once completed), less the failures when counted (`failed`)."""
    if total is None or isinstance(progress, bool) or not isinstance(progress, int | float):
        return None
    share = min(max(float(progress), 0.0), 100.0) / 100.0
    processed = total if status == "completed" else math.floor(share * total + 1e-9)
    failed = min(failed or 0, total)
    return RequestCounts(total=total, completed=max(processed - failed, 0), failed=failed)


def parse_job(
    data: Mapping[str, Any], total: int | None = None, failed: int | None = None
) -> UpstreamBatch:
    """A Together BatchJob (unwrapped) as an UpstreamBatch; `total`: its request count,
    `failed`: the lines of its error file, once counted."""
    job_id = _text(data.get("id"))
    raw_status = data.get("status")
    if job_id is None or not isinstance(raw_status, str):
        raise ProviderError("retryable", "the provider sent an unreadable batch")
    status = STATUSES.get(raw_status.upper(), "in_progress")
    timestamps: dict[str, int | None] = {"expires_at": unix_time(data.get("job_deadline"))}
    if status in _ENDED_AT:
        timestamps[_ENDED_AT[status]] = unix_time(data.get("completed_at"))
    errors = None
    if status in ("failed", "expired") and (message := _text(data.get("error"))):
        code = "batch_failed" if status == "failed" else "batch_expired"
        errors = [{"code": code, "message": message, "param": None, "line": None}]
    return UpstreamBatch(
        id=job_id,
        status=status,
        output_file_id=_text(data.get("output_file_id")),
        error_file_id=_text(data.get("error_file_id")),
        model=_text(data.get("model_id")),
        errors=errors,
        request_counts=estimate_counts(data.get("progress"), total, status, failed),
        timestamps=timestamps,
    )


def unwrapped(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The job of a create answer (`{"job": ..., "warning": ...}`); others come bare."""
    job = data.get("job")
    return job if isinstance(job, Mapping) else data


def input_line(line: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI input line as Together's `{custom_id, body}` (method and url dropped: the
    batch's endpoint says where every line goes)."""
    custom_id = line.get("custom_id")
    if isinstance(custom_id, str) and len(custom_id) > MAX_CUSTOM_ID:
        raise LineError(f"Together accepts a custom_id of at most {MAX_CUSTOM_ID} characters.")
    return {"custom_id": custom_id, "body": line.get("body")}


def result_line(line: Any, index: int) -> dict[str, Any]:
    """One Together result line as an OpenAI output/error line. Its ids are placeholders
    derived from the position; the gateway's `result_lines` replaces them with its own."""
    line_id, request_id = f"batch_req_{stable_hex(index)}", f"req_{stable_hex(index, 'r')}"
    if not isinstance(line, dict):
        return error_line(line_id, None, ("invalid_provider_line", "Not a JSON object."))
    custom_id = line.get("custom_id")
    response = line.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        body = response.get("body")
        return response_line(line_id, custom_id, response["status_code"], request_id, body)
    error = line.get("error")
    if isinstance(error, dict):
        code = _text(error.get("code")) or _text(error.get("type"))
        message = _text(error.get("message")) or code or "The provider gave no reason."
        return error_line(line_id, custom_id, (code, message))
    if isinstance(error, str) and error:
        return error_line(line_id, custom_id, (None, error))
    message = "The provider sent a result line with neither a response nor an error."
    return error_line(line_id, custom_id, ("invalid_provider_line", message))


async def _noting_refusal(
    chunks: AsyncIterator[bytes], refused: list[ProviderError]
) -> AsyncIterator[bytes]:
    """`chunks`, noting a line refusal raised while the request streams them (the
    transport reports it only as a broken-off request)."""
    try:
        async for chunk in chunks:
            yield chunk
    except ProviderError as exc:
        refused.append(exc)
        raise


class TogetherProvider(HTTPProvider):
    """Together's Batch API behind the gateway's OpenAI one (see the module docstring)."""

    lookup: Lookup = "count"
    id_patterns = _TOGETHER_IDS

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        *,
        api_key: str | None,
        state: StateStore,
    ) -> None:
        super().__init__(name, endpoints & SUPPORTED_ENDPOINTS, http, api_key=api_key)
        self.state = state

    async def _total(self, data: Mapping[str, Any]) -> int | None:
        """The job's request count, as its upload recorded it."""
        file_id = _text(data.get("input_file_id"))
        recorded = await self.state.load(file_id) if file_id else None
        lines = recorded.get("lines") if recorded else None
        return lines if isinstance(lines, int) and not isinstance(lines, bool) else None

    async def _job(self, data: Mapping[str, Any]) -> UpstreamBatch:
        job = unwrapped(data)
        total = await self._total(job)
        batch = parse_job(job, total)
        if batch.terminal and total is not None and batch.error_file_id:
            failed = await self._failed(batch.id, batch.error_file_id)
            batch = parse_job(job, total, failed)
        return self.scrub_batch(batch)

    async def _failed(self, job_id: str, error_file_id: str) -> int | None:
        """How many requests an ended job failed: its error file's lines, counted once
        (kept under the job's id) since Together reports no count. None if unreadable now."""
        saved = await self.state.load(job_id)
        if saved is not None and isinstance(saved.get("failed"), int):
            return int(saved["failed"])
        count = 0
        try:
            async with self.stream(f"/files/{path_id(error_file_id)}/content") as chunks:
                async for _ in iter_lines(chunks):
                    count += 1
        except ProviderError:
            return None
        await self.state.save(job_id, {"failed": count})
        return count

    async def upload_file(self, file: InputFile) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", PURPOSE)
        form.add_field("file_name", file.filename)
        form.add_field("file_type", "jsonl")
        refused: list[ProviderError] = []
        body = _noting_refusal(rewritten(file, input_line), refused)
        form.add_field("file", body, filename=file.filename, content_type="application/jsonl")
        try:
            uploaded = parse_file(await self.request_json("POST", "/files/upload", data=form))
        except ProviderError:
            # A line refused mid-stream breaks the request off: the refusal is the reason.
            if refused:
                raise refused[0] from None
            raise
        await self.state.save(uploaded.id, {"lines": file.line_count})
        return uploaded.id

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        if not self.supports(request.endpoint):
            runs = ", ".join(sorted(self.endpoints)) or "no endpoint"
            message = f"This provider runs {runs} batches, not '{request.endpoint}'."
            raise ProviderError("bad_request", message)
        body = {
            "input_file_id": request.input_file_id,
            "endpoint": request.endpoint,
            "completion_window": request.completion_window,
        }
        data = await self.request_json("POST", "/batches", json=body)
        if not isinstance(data.get("job"), Mapping):
            # Made or not, the answer does not say: the gateway looks it up.
            raise ProviderError(
                "retryable", "the provider sent an unreadable batch", ambiguous=True
            )
        return await self._job(data)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        return await self._job(await self.request_json("GET", f"/batches/{path_id(upstream_id)}"))

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        path = f"/batches/{path_id(upstream_id)}/cancel"
        data = await self.request_json("POST", path)
        if _text(unwrapped(data).get("status")) is None:
            return await self.get_batch(upstream_id)
        return await self._job({"id": upstream_id, **unwrapped(data)})

    async def _jobs(self) -> list[Mapping[str, Any]]:
        """Every job of the account: `GET /batches` answers one unpaged JSON array."""
        resp = await self.request_raw("GET", "/batches")
        if resp.status >= 400:
            raise self.http_error(resp.status, resp.body, resp.headers)
        try:
            data = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            data = False  # unreadable: a lookup must not take it for "no jobs"
        if data is None:
            return []  # `null`, as an account without jobs may be answered
        if not isinstance(data, list):
            raise ProviderError("retryable", "the provider sent an unreadable list")
        return [item for item in data if isinstance(item, Mapping)]

    async def candidates(self, request: BatchRequest, since: int) -> list[UpstreamBatch]:
        """Jobs made since `since` (less the clock skew) from the same uploaded file,
        newest first. A job without a readable `created_at` counts: it may be ours."""
        oldest = since - CLOCK_SKEW_SECONDS
        found = []
        for item in await self._jobs():
            if item.get("input_file_id") != request.input_file_id:
                continue
            created = unix_time(item.get("created_at"))
            if created is not None and created < oldest:
                continue
            found.append((created or 0, self.scrub_batch(parse_job(item))))
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [batch for _, batch in found]

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        page = await self.request_json("GET", "/files")
        data = page.get("data")
        if not isinstance(data, list):
            raise ProviderError("retryable", "the provider sent an unreadable list")
        oldest = since - CLOCK_SKEW_SECONDS
        found = []
        for item in data:
            if not isinstance(item, Mapping) or item.get("purpose") != PURPOSE:
                continue
            name, file_id = item.get("filename"), _text(item.get("id"))
            created = item.get("created_at")
            if isinstance(created, int) and created < oldest:
                continue
            if isinstance(name, str) and file_id and (match := GATEWAY_FILE_NAME.fullmatch(name)):
                found.append((match.group(1), file_id))
        return found

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        return parse_file(await self.request_json("GET", f"/files/{path_id(upstream_file_id)}"))

    async def delete_file(self, upstream_file_id: str) -> None:
        await self.request_json("DELETE", f"/files/{path_id(upstream_file_id)}")
        await self.state.delete(upstream_file_id)

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self._results(f"/files/{path_id(upstream_file_id)}/content")

    @asynccontextmanager
    async def _results(self, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """A result file rewritten to OpenAI's line shape as it streams; errors on entry."""
        async with self.stream(path) as chunks:
            yield self._translated(chunks)

    async def _translated(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        index = 0
        async for raw in iter_lines(chunks):
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield raw.strip() + b"\n"  # left for the gateway's normalizer to report
                continue
            translated = result_line(line, index)
            if isinstance(translated.get("error"), dict):
                translated["error"]["message"] = self.scrub(translated["error"]["message"])
            yield dumps(translated)
            index += 1


class TogetherProviderConfig(RemoteConfig):
    """Together AI: `api_key` (required) and, if not the public API, `base_url`."""

    # Together: 50,000 requests, 100 MB per batch file.
    batch_limits: ClassVar[tuple[int, int]] = (50_000, 100 * 1024 * 1024)

    type: Literal["together"]
    base_url: HttpUrl = "https://api.together.xyz/v1"


def build(context: ProviderContext, config: TogetherProviderConfig) -> TogetherProvider:
    assert context.http is not None
    return TogetherProvider(
        context.name,
        context.endpoints,
        context.http,
        api_key=config.secret_key(),
        state=context.state,
    )


TYPE = ProviderType("together", TogetherProviderConfig, build)
