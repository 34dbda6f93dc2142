"""Any OpenAI-compatible Batch API: OpenAI, anyapi.ai, fastapi.ai, Together, Groq, ...

One class for all of them; differences are config (base_url, key, endpoints)
plus tolerance for documented quirks: anyapi.ai's docs show placeholder values
(`123` for unset timestamps, `"<string>"` for unset file ids) and a cancel that
answers only `{id, object, status}`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import IO, Any, Literal

import aiohttp

from providers.base import (
    BATCH_STATUSES,
    CLOCK_SKEW_SECONDS,
    GATEWAY_FILE_NAME,
    GATEWAY_TAG,
    TIMESTAMP_FIELDS,
    BatchRequest,
    ByteStream,
    InputFile,
    Lookup,
    ProviderError,
    RequestCounts,
    UpstreamBatch,
    UpstreamFile,
)
from providers.config import RemoteConfig
from providers.context import ProviderContext, ProviderType
from providers.http import HTTPProvider, path_id

# Unix seconds before 2001-09-09 are placeholders, not times (anyapi.ai's docs send 123).
_MIN_TIMESTAMP = 1_000_000_000

# Which timestamps can be set in each status; anything else is a placeholder.
_REACHED: dict[str, frozenset[str]] = {
    "validating": frozenset(),
    "in_progress": frozenset({"in_progress_at"}),
    "finalizing": frozenset({"in_progress_at", "finalizing_at"}),
    "completed": frozenset({"in_progress_at", "finalizing_at", "completed_at"}),
    "failed": frozenset({"in_progress_at", "failed_at"}),
    "expired": frozenset({"in_progress_at", "finalizing_at", "expired_at"}),
    "cancelling": frozenset({"in_progress_at", "finalizing_at", "cancelling_at"}),
    "cancelled": frozenset({"in_progress_at", "finalizing_at", "cancelling_at", "cancelled_at"}),
}


def _timestamp(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= _MIN_TIMESTAMP else None


_NOT_IN_IDS = re.compile(r"[<> \t\n]")


def _str_id(value: Any) -> str | None:
    """A real id, or None for null / empty / documentation placeholders like "<string>"."""
    if not isinstance(value, str) or not value or _NOT_IN_IDS.search(value):
        return None
    return value


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _tag(item: Mapping[str, Any]) -> str | None:
    metadata = item.get("metadata")
    tag = metadata.get(GATEWAY_TAG) if isinstance(metadata, Mapping) else None
    return tag if isinstance(tag, str) else None


def _after(cursor: str | None) -> dict[str, str]:
    return {"after": cursor} if cursor else {}


def parse_request_counts(value: Any) -> RequestCounts | None:
    if not isinstance(value, Mapping):
        return None
    total, completed, failed = (_int(value.get(k)) for k in ("total", "completed", "failed"))
    if total is None or completed is None or failed is None:
        return None
    return RequestCounts(total, completed, failed)


def parse_usage(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    inp, out = _int(value.get("input_tokens")), _int(value.get("output_tokens"))
    if inp is None or out is None:
        return None
    cached = _int((value.get("input_tokens_details") or {}).get("cached_tokens")) or 0
    reasoning = _int((value.get("output_tokens_details") or {}).get("reasoning_tokens")) or 0
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": _int(value.get("total_tokens")) or inp + out,
    }


def parse_errors(value: Any) -> list[dict[str, Any]] | None:
    data = value.get("data") if isinstance(value, Mapping) else None
    if not isinstance(data, list) or not data:
        return None
    out = []
    for item in data:
        if isinstance(item, Mapping):
            out.append(
                {
                    "code": item.get("code") if isinstance(item.get("code"), str) else None,
                    "message": item.get("message")
                    if isinstance(item.get("message"), str)
                    else None,
                    "param": item.get("param") if isinstance(item.get("param"), str) else None,
                    "line": _int(item.get("line")),
                }
            )
    return out or None


def parse_batch(data: Mapping[str, Any]) -> UpstreamBatch:
    """An OpenAI-shaped Batch JSON -> UpstreamBatch, dropping placeholders."""
    batch_id = _str_id(data.get("id"))
    if batch_id is None:
        raise ProviderError("retryable", "the provider sent a batch without an id")
    status = data.get("status")
    if status not in BATCH_STATUSES:
        raise ProviderError("retryable", "the provider sent a batch with an unknown status")
    reached = _REACHED[status]
    timestamps = {
        name: _timestamp(data.get(name))
        for name in TIMESTAMP_FIELDS
        if name == "expires_at" or name in reached
    }
    has_files = status in ("completed", "expired", "cancelled", "failed")
    model = data.get("model")
    return UpstreamBatch(
        id=batch_id,
        status=status,
        output_file_id=_str_id(data.get("output_file_id")) if has_files else None,
        error_file_id=_str_id(data.get("error_file_id")) if has_files else None,
        model=model if isinstance(model, str) and _str_id(model) else None,
        errors=parse_errors(data.get("errors")),
        request_counts=parse_request_counts(data.get("request_counts")),
        usage=parse_usage(data.get("usage")),
        timestamps=timestamps,
    )


def parse_file(data: Mapping[str, Any]) -> UpstreamFile:
    file_id = _str_id(data.get("id"))
    if file_id is None:
        raise ProviderError("retryable", "the provider sent a file without an id")
    filename = data.get("filename")
    return UpstreamFile(
        id=file_id,
        bytes=_int(data.get("bytes")),
        created_at=_timestamp(data.get("created_at")) or 0,
        filename=filename if isinstance(filename, str) else "",
    )


class OpenAICompatProvider(HTTPProvider):
    """Built with `(name, endpoints, HTTPSettings, api_key=...)`, sent as a Bearer token."""

    lookup: Lookup = "tag"

    def _batch(self, data: Mapping[str, Any]) -> UpstreamBatch:
        return self.scrub_batch(parse_batch(data))

    async def upload_file(self, file: InputFile) -> str:
        # A local file goes with its length; a remote blob (S3) streams through, chunked.
        if file.path is not None:
            with open(file.path, "rb") as fh:
                return await self._upload(file.filename, fh)
        async with file.open() as chunks:
            return await self._upload(file.filename, chunks)

    async def _upload(self, filename: str, body: IO[bytes] | AsyncIterator[bytes]) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", body, filename=filename, content_type="application/jsonl")
        return parse_file(await self.request_json("POST", "/files", data=form)).id

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        body: dict[str, Any] = {
            "input_file_id": request.input_file_id,
            "endpoint": request.endpoint,
            "completion_window": request.completion_window,
        }
        if metadata := request.tagged_metadata():
            body["metadata"] = metadata
        if request.output_expires_after:
            body["output_expires_after"] = request.output_expires_after
        return self._batch(await self.request_json("POST", "/batches", json=body))

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        return self._batch(await self.request_json("GET", f"/batches/{path_id(upstream_id)}"))

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        data = await self.request_json("POST", f"/batches/{path_id(upstream_id)}/cancel")
        return self._batch({"id": upstream_id, **data})

    async def find_batch(self, gateway_batch_id: str, since: int) -> UpstreamBatch | None:
        async for item in self._listed("/batches", since, {"limit": "100"}):
            if _tag(item) == gateway_batch_id:
                return self._batch(item)
        return None

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        found = []
        async for item in self._listed("/batches", since, {"limit": "100"}):
            if (tag := _tag(item)) is not None:
                found.append((tag, self._batch(item)))
        return found

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        query = {"purpose": "batch", "limit": "1000", "order": "desc"}
        found = []
        async for item in self._listed("/files", since, query):
            name, file_id = item.get("filename"), _str_id(item.get("id"))
            if isinstance(name, str) and file_id and (match := GATEWAY_FILE_NAME.fullmatch(name)):
                found.append((match.group(1), file_id))
        return found

    async def delete_file(self, upstream_file_id: str) -> None:
        await self.request_json("DELETE", f"/files/{path_id(upstream_file_id)}")

    async def _listed(
        self, path: str, since: int, query: dict[str, str]
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Every object of a newest-first list made since `since` (less the clock skew).

        Reads as many pages as that takes, however busy the account: stopping early
        would let a lookup conclude "never made" about a batch that exists. A page
        that cannot be read or continued raises.
        """
        oldest = since - CLOCK_SKEW_SECONDS
        after: str | None = None
        while True:
            page = await self.request_json("GET", path, params={**query, **_after(after)})
            data = page.get("data")
            if not isinstance(data, list):
                raise ProviderError("retryable", "the provider sent an unreadable list")
            for item in data:
                if not isinstance(item, Mapping):
                    continue
                created = _timestamp(item.get("created_at"))
                if created is not None and created < oldest:
                    return
                yield item
            if not page.get("has_more") or not data:
                return
            after = _str_id(data[-1].get("id")) if isinstance(data[-1], Mapping) else None
            if after is None:
                raise ProviderError("retryable", "the provider sent a list without a cursor")

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        return parse_file(await self.request_json("GET", f"/files/{path_id(upstream_file_id)}"))

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self.stream(f"/files/{path_id(upstream_file_id)}/content")


class OpenAIProviderConfig(RemoteConfig):
    """Any OpenAI-compatible Batch API; adding one is a config entry."""

    type: Literal["openai"]


def build(context: ProviderContext, config: OpenAIProviderConfig) -> OpenAICompatProvider:
    assert context.http is not None
    return OpenAICompatProvider(
        context.name, context.endpoints, context.http, api_key=config.secret_key()
    )


TYPE = ProviderType("openai", OpenAIProviderConfig, build)
