"""`type: gemini`: OpenAI batches run as Gemini API Batch Mode jobs.

Flow (ai.google.dev/gemini-api/docs/batch-mode and the REST reference, checked against
the official SDK `googleapis/python-genai`): `upload_file` translates the validated input
line by line (`translate.py`) into `{"key", "request"}` lines and sends them with the Files
API's resumable protocol; `create_batch` posts `models/{model}:batchGenerateContent` (or
`:asyncBatchEmbedContent` for `/v1/embeddings`: announced on Google's developer blog in
September 2025 with its `{"key", "request": {"content", "output_dimensionality"}}` lines,
`batches.create_embeddings` in the SDK, which still calls it experimental) naming that
file, with the gateway's batch id as `displayName`, which is how a create of unknown
outcome is found again (`lookup = "tag"`). Reading the answers: `operations.py`.

The upload URL the start call returns is absolute; it is followed only on the configured
base URL, and one on another host is sent to ours with its path and query (what the SDK
does when a base URL is configured), so the key never goes elsewhere.

Gemini writes one results file per batch; the gateway sees it as two files,
`<file>#output` and `<file>#errors` (never shown to clients: the gateway rewrites ids),
each streaming only its own lines, translated to OpenAI's batch output line shape on the
way. The adapter remembers (StateStore) the uploaded file's model and endpoint, the model
and end time of each results file, so a translated file is the same bytes on every read,
and which view of a results file was deleted (the file goes once both are).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson
from aiohttp.payload import AsyncIterablePayload
from pydantic import Field

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
from providers.gemini import translate
from providers.gemini.operations import (
    BATCH_NAME,
    FILE_NAME,
    GeminiBatch,
    int64,
    list_page,
    parse_batch,
    rfc3339,
)
from providers.http import HTTPProvider, iter_lines
from providers.lines import rewritten, rewritten_size
from providers.results import VIEWS, results_view, shown_views, split_named, views_deleted
from providers.transport import UNSAFE_TARGET, HTTPSettings

__all__ = ["GeminiProvider", "GeminiProviderConfig", "parse_batch", "rfc3339"]

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
_METHODS = {CHAT: "batchGenerateContent", EMBEDDINGS: "asyncBatchEmbedContent"}
_MODEL = re.compile(r"(?:models/)?([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
# The docs' "Batch expiration": jobs pending or running for 48 hours expire.
EXPIRY_SECONDS = 48 * 3600
# Gemini's resource names and API keys, kept out of anything a client sees.
_GEMINI_NAMES = (
    (
        re.compile(r"\b(?:batches|files|operations|cachedContents|tunedModels)/[\w.-]+"),
        "[upstream id]",
    ),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), "[redacted]"),
)


def _model(name: str) -> str:
    match = _MODEL.fullmatch(name)
    if match is None:
        raise ProviderError("bad_request", f"'{name[:100]}' is not a Gemini model name.")
    return match.group(1)


class GeminiProvider(HTTPProvider):
    key_header, key_prefix = "x-goog-api-key", ""
    # google.rpc.Status: `{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}`.
    error_code_key = "status"
    id_patterns = _GEMINI_NAMES
    lookup: Lookup = "tag"

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        *,
        api_key: str,
        api_version: str,
        state: StateStore,
    ) -> None:
        super().__init__(name, endpoints & set(_METHODS), http, api_key=api_key)
        self.version = api_version
        self.state = state

    def http_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        """Google answers a wrong API key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID):
        that is the gateway's key, not the client's request."""
        error = super().http_error(status, body, headers)
        if status == 400 and b"API_KEY_INVALID" in body:
            message = "The provider refused the gateway's API key."
            return ProviderError("auth", message, status=status, code=error.code)
        return error

    # --- files -------------------------------------------------------------------

    async def upload_file(self, file: InputFile) -> str:
        """Translate and upload with the resumable protocol; the size goes first, so the
        translation runs twice (`rewritten_size`) rather than holding the file."""
        if file.endpoint not in self.endpoints:
            runs = ", ".join(sorted(self.endpoints))
            message = f"Gemini runs {runs} batches here, not '{file.endpoint}'."
            raise ProviderError("bad_request", message)
        if len(file.models) != 1:
            message = "A Gemini batch runs one model; this file names " + (
                f"{len(file.models)}: {', '.join(sorted(file.models))[:300]}."
            )
            raise ProviderError("bad_request", message)
        model = _model(file.models[0])
        transform = translate.chat_line if file.endpoint == CHAT else translate.embeddings_line
        size = await rewritten_size(file, transform)
        upload = await self._start_upload(file.filename, size)
        headers = {
            "Content-Length": str(size),
            "X-Goog-Upload-Offset": "0",
            "X-Goog-Upload-Command": "upload, finalize",
        }
        # Streamed with the length announced (the request_raw annotation names the
        # bodies the other adapters send; aiohttp takes any payload).
        body = AsyncIterablePayload(rewritten(file, transform))
        data = await self.request_json("POST", upload, data=body, headers=headers)
        uploaded = data.get("file")
        name = uploaded.get("name") if isinstance(uploaded, dict) else None
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
            raise ProviderError("retryable", "the provider sent a file without a name")
        await self.state.save(name, {"model": model, "endpoint": file.endpoint})
        return name

    async def _start_upload(self, filename: str, size: int) -> str:
        headers = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        }
        body = {"file": {"displayName": filename}}
        resp = await self.request_raw(
            "POST", f"/upload/{self.version}/files", json=body, headers=headers
        )
        if resp.status >= 400:
            raise self.http_error(resp.status, resp.body, resp.headers)
        url = resp.headers.get("x-goog-upload-url") or resp.headers.get("X-Goog-Upload-URL")
        if not url:
            raise ProviderError("retryable", "the provider sent no upload URL")
        return self._own_target(url)

    def _own_target(self, url: str) -> str:
        """The upload URL as a path on our base URL: the key goes nowhere else. One on
        another host keeps its path and query but is sent to our host, as the official
        SDK does with a configured base URL."""
        unusable = ProviderError("retryable", "the provider sent an unusable upload URL")
        if UNSAFE_TARGET.search(url):
            raise unusable
        if url.startswith(self.base_url + "/"):
            return url.removeprefix(self.base_url)
        parts = urlsplit(url)
        if not parts.path.startswith("/"):
            raise unusable
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def _file(self, name: str) -> Mapping[str, Any]:
        return await self.request_json("GET", f"/{self.version}/{name}")

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        name, part = _split(upstream_file_id)
        data = await self._file(name)
        created = rfc3339(data.get("createTime")) or 0
        if part is not None:
            # One results file, two views: only a read tells each one's size.
            return UpstreamFile(upstream_file_id, None, created, f"{part}.jsonl")
        display = data.get("displayName")
        return UpstreamFile(
            name,
            int64(data.get("sizeBytes")),
            created,
            display if isinstance(display, str) else "",
        )

    async def delete_file(self, upstream_file_id: str) -> None:
        """An input file is deleted at once; the results file once both its views are."""
        name, part = _split(upstream_file_id)
        if part is not None:
            shown = (await self.state.load(f"results:{name}") or {}).get("views", VIEWS)
            if not await views_deleted(self.state, name, part, shown):
                return
        await self.request_json("DELETE", f"/{self.version}/{name}")
        await self.state.delete(name)

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        found = []
        async for item in self._listed("files", "files", since):
            name, display = item.get("name"), item.get("displayName")
            if isinstance(display, str) and isinstance(name, str):
                if match := GATEWAY_FILE_NAME.fullmatch(display):
                    found.append((match.group(1), name))
        return found

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self._results(upstream_file_id)

    @asynccontextmanager
    async def _results(self, upstream_file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        # Uploaded files cannot be downloaded from the Files API: only results views.
        name, part = results_view(upstream_file_id, FILE_NAME, FILE_NAME)
        facts = await self.state.load(f"results:{name}") or {}
        created = facts.get("created") or rfc3339((await self._file(name)).get("createTime"))
        path = f"/download/{self.version}/{name}:download?alt=media"
        async with self.stream(path) as chunks:
            yield self._translated(chunks, part, facts.get("model") or "", created or 0, name)

    async def _translated(
        self, chunks: AsyncIterator[bytes], part: str, model: str, created: int, seed: str
    ) -> AsyncIterator[bytes]:
        async for raw in iter_lines(chunks):
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ProviderError("retryable", "the results are not JSONL") from None
            if not isinstance(item, dict):
                continue
            line = translate.result_line(
                item, model=model, created=created, seed=seed, scrub=self.scrub
            )
            if (line["response"]["status_code"] == 200) == (part == "output"):
                yield orjson.dumps(line) + b"\n"

    # --- batches -----------------------------------------------------------------

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        facts = await self.state.load(request.input_file_id)
        if facts is None:
            raise ProviderError("not_found", "The input file is not known to this provider.")
        if facts["endpoint"] != request.endpoint:
            uploaded = facts["endpoint"]
            message = f"The input file was uploaded for {uploaded}, not {request.endpoint}."
            raise ProviderError("bad_request", message)
        body = {
            "batch": {
                "displayName": request.gateway_batch_id or "batch-gateway",
                "inputConfig": {"fileName": request.input_file_id},
            }
        }
        method = _METHODS[request.endpoint]
        path = f"/{self.version}/models/{facts['model']}:{method}"
        view = await self._view(await self.request_json("POST", path, json=body))
        if view.model is None:
            view.model = facts["model"]
        return view

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        return await self._view(await self.request_json("GET", self._batch_path(upstream_id)))

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        await self.request_json("POST", self._batch_path(upstream_id) + ":cancel")
        view = await self.get_batch(upstream_id)
        if not view.terminal:  # Gemini keeps it running until the cancel takes
            view.status = "cancelling"
        return view

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        found = []
        async for item in self._listed("batches", "operations", since):
            batch = parse_batch(item)
            if batch.display_name:
                found.append((batch.display_name, await self._view(item, batch)))
        return found

    def _batch_path(self, upstream_id: str) -> str:
        if not BATCH_NAME.fullmatch(upstream_id):
            raise ProviderError("not_found", "No such batch at the provider.")
        return f"/{self.version}/{upstream_id}"

    async def _listed(
        self, collection: str, key: str, since: int
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Every item of a list made since `since` (less the clock skew).

        The API documents no order, so paging stops only after a whole page older than
        that (newest-first lists end there at once); a page that cannot be read raises.
        """
        oldest = since - CLOCK_SKEW_SECONDS
        token: str | None = None
        while True:
            query = {"pageSize": "100", **({"pageToken": token} if token else {})}
            answer = await self.request_json("GET", f"/{self.version}/{collection}", params=query)
            items, token = list_page(answer, key)
            recent = False
            for item in items:
                if not isinstance(item, Mapping):
                    continue
                meta = item.get("metadata")
                created = rfc3339((meta if isinstance(meta, Mapping) else item).get("createTime"))
                if created is not None and created < oldest:
                    continue
                recent = True
                yield item
            if token is None or not items or not recent:
                return

    async def _view(
        self, data: Mapping[str, Any], batch: GeminiBatch | None = None
    ) -> UpstreamBatch:
        batch = batch or parse_batch(data)
        total, succeeded, failed = batch.counts
        counts = None
        if total is not None:
            counts = RequestCounts(total, succeeded or 0, failed or 0)
        timestamps: dict[str, int | None] = {
            "expires_at": batch.created + EXPIRY_SECONDS if batch.created else None
        }
        if batch.status != "validating":
            timestamps["in_progress_at"] = batch.created  # Gemini reports no start time
        view = UpstreamBatch(
            id=batch.name,
            status=batch.status,
            model=batch.model,
            request_counts=counts,
            timestamps=timestamps,
        )
        if view.terminal:
            timestamps[f"{batch.status}_at"] = batch.ended
            if batch.error is not None:
                message = batch.error.get("message")
                text = self.scrub(message) if isinstance(message, str) else "The batch failed."
                code = batch.error.get("status")
                view.errors = [
                    {"code": code if isinstance(code, str) else None, "message": text}
                    | {"param": None, "line": None}
                ]
            if batch.responses_file:
                if succeeded is None or succeeded > 0:
                    view.output_file_id = f"{batch.responses_file}#output"
                if failed is None or failed > 0:
                    view.error_file_id = f"{batch.responses_file}#errors"
                await self._remember(batch, shown_views(view.output_file_id, view.error_file_id))
        return view

    async def _remember(self, batch: GeminiBatch, views: list[str]) -> None:
        """What a results file's translation needs, kept so every read is the same, and
        the views shown (the file goes once those are deleted)."""
        key = f"results:{batch.responses_file}"
        if await self.state.load(key) is None:
            facts = {"model": batch.model, "created": batch.ended, "views": views}
            await self.state.save(key, facts)


def _split(upstream_file_id: str) -> tuple[str, str | None]:
    """`files/x` -> (files/x, None); `files/x#output` -> (files/x, "output")."""
    return split_named(upstream_file_id, FILE_NAME, FILE_NAME)


class GeminiProviderConfig(RemoteConfig):
    """The Gemini API's Batch Mode: `/v1/chat/completions`, and `/v1/embeddings` through
    asyncBatchEmbedContent (experimental in the SDK)."""

    # Gemini Batch API: input files up to 2 GB.
    batch_limits: ClassVar[tuple[int, int]] = (1_000_000, 2 * 1024 * 1024 * 1024)

    type: Literal["gemini"]
    endpoints: tuple[Literal["/v1/chat/completions", "/v1/embeddings"], ...] | None = (
        "/v1/chat/completions",
        "/v1/embeddings",
    )
    base_url: HttpUrl = "https://generativelanguage.googleapis.com"
    # Batch Mode is documented under v1beta only; a path segment, so only version-shaped.
    api_version: str = Field("v1beta", pattern=r"^v\d+(?:alpha|beta)?\d*$")


def build(context: ProviderContext, config: GeminiProviderConfig) -> GeminiProvider:
    assert context.http is not None and (key := config.secret_key()) is not None
    return GeminiProvider(
        context.name,
        context.endpoints,
        context.http,
        api_key=key,
        api_version=config.api_version,
        state=context.state,
    )


TYPE = ProviderType("gemini", GeminiProviderConfig, build)
