"""`type: azure`: Azure OpenAI Batch, run on Global-Batch (or Data Zone Batch) deployments.

Azure's Batch API is OpenAI's (same Files and Batch objects, statuses, line shapes), so
`AzureProvider` is an `OpenAICompatProvider` that differs only where Azure does:

- URLs. `base_url` is the resource endpoint (`https://<resource>.openai.azure.com`).
  `api_style: classic` calls `{endpoint}/openai/files|batches?api-version=…` (default
  `2024-10-21`, the GA data-plane version) with the version on every call, content
  downloads and list pages included; `api_style: v1` calls `{endpoint}/openai/v1/files|
  batches` with no version (or the one set, e.g. `preview`).
- Auth. An `api-key` header, or with `auth: entra` a Microsoft Entra ID bearer token from
  azure-identity's `DefaultAzureCredential` (scope `https://cognitiveservices.azure.com/
  .default`), fetched again five minutes before it expires.
- Input lines. `body.model` must name a Global-Batch *deployment*, the same one on every
  line (Azure fails a batch with `model_mismatch` otherwise). `deployments` maps the
  client's model names to deployment names while the file streams up; a model without an
  entry goes as it is, since deployments are often named after their model. The classic
  docs write line urls without the `/v1` prefix (`/chat/completions`), the v1 docs with
  it; both write a create's `endpoint` without it. Each style gets what its docs show.
- Files. A classic upload answers `status: pending`, and a create on a file that is not
  `processed` is refused, so `upload_file` waits (bounded by `file_wait_seconds`) for
  `processed`; a file Azure marks `error` is a bad request carrying its `status_details`.
- Batch objects. Azure's own examples show ISO-8601 timestamps, a capitalised status
  (`"Validating"`), null request counts, `""` for unset file ids, and (2024-10-21 spec)
  `errors.data` as one object whose `line` is a string: all read here. `model` is dropped:
  it names a deployment or the model behind it, not what the client asked for.
- Errors. `{"error": {"code", "message"}}` with codes like `"401"` / `"429"` or the spec's
  names (`notFound`, `tooManyRequests`), and `{"statusCode", "message"}` for a refused
  bearer token. A create refused with `token_limit_exceeded` (the enqueued-token quota's
  "fail fast") is retryable.
- Time. Azure does not expire a job past its 24 h window; it keeps running until
  cancelled. Such a batch stays `in_progress` here, and the gateway's overdue handling
  (`poller.expiry_grace_seconds`) cancels and expires it as for any provider. A completed
  job's error file is empty (0 bytes), which the gateway shows as no error file.
- Lookups. Batches carry `metadata` on 2024-10-21 and v1, so lookups are by tag. The
  classic lists promise no order (and the classic files list no paging), so a classic
  lookup reads every page and keeps what was made since; v1 lists are OpenAI's.

Sources: learn.microsoft.com "Getting started with Azure OpenAI batch deployments" (REST
and Python tabs, both styles) and the 2024-10-21 authoring spec (azure-rest-api-specs).
Where they disagree with OpenAI's SDK types (`endpoint: "/chat/completions"`), the Azure
docs win.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import orjson
from pydantic import Field, model_validator

from providers.base import (
    CLOCK_SKEW_SECONDS,
    TIMESTAMP_FIELDS,
    BatchRequest,
    InputFile,
    ProviderError,
    UpstreamBatch,
)
from providers.config import RemoteConfig
from providers.context import ProviderContext, ProviderType
from providers.http import UUID_ID, RawResponse, path_id
from providers.lines import LineError, Transform, rewritten
from providers.openai_compat import OpenAICompatProvider, parse_batch
from providers.tokens import BearerToken, TokenSource
from providers.transport import Body, HTTPSettings

__all__ = [
    "AzureProvider",
    "AzureProviderConfig",
    "azure_endpoint",
    "file_state",
    "line_translator",
    "normalize_batch",
]

ApiStyle = Literal["classic", "v1"]
API_VERSION = "2024-10-21"
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"
# What each style's docs show Global Batch running, unless `endpoints:` says otherwise.
DEFAULT_ENDPOINTS: dict[ApiStyle, frozenset[str]] = {
    "classic": frozenset({CHAT}),
    "v1": frozenset({CHAT, RESPONSES}),
}
# Refusals that are about capacity, not the request: another try later may work.
RETRYABLE_CODES = frozenset({"token_limit_exceeded"})
# File states (2024-10-21 `FileState`) after which a file will never be `processed`.
FILE_FAILED = frozenset({"error", "deleting", "deleted"})
FILE_POLL_FIRST, FILE_POLL_MOST = 0.2, 5.0
# Azure's request and object ids are UUIDs; `file-…` and `batch_…` are scrubbed already.


def azure_endpoint(endpoint: str) -> str:
    """A gateway endpoint (`/v1/chat/completions`) as Azure's docs write it in a create."""
    return endpoint.removeprefix("/v1")


def line_translator(deployments: Mapping[str, str], style: ApiStyle) -> Transform:
    """A `providers.lines.rewritten` transform for one upload: `body.model` becomes its
    deployment, which must be the same on every line; classic urls lose `/v1`."""
    first: list[str] = []

    def translate(line: dict[str, Any]) -> dict[str, Any]:
        body = line.get("body")
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(model, str) or not model:
            raise LineError("body.model is missing; Azure picks the deployment by it")
        deployment = deployments.get(model, model)
        if not first:
            first.append(deployment)
        elif deployment != first[0]:
            raise LineError(
                f"model {model!r} runs on another Azure deployment than the lines before"
                " it; Azure runs one deployment per batch"
            )
        out = {**line, "body": {**body, "model": deployment}}
        if style == "classic" and isinstance(line.get("url"), str):
            out["url"] = azure_endpoint(line["url"])
        return out

    return translate


def _unix(value: Any) -> Any:
    """Unix seconds from a number, a digit string or an ISO-8601 string; else as given."""
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            return int(datetime.fromisoformat(value).timestamp())
        except ValueError:
            return None
    return value


def _error_item(item: Any) -> Any:
    if isinstance(item, Mapping) and isinstance(item.get("line"), str):
        return {**item, "line": int(item["line"]) if item["line"].isdigit() else None}
    return item


def normalize_batch(data: Mapping[str, Any]) -> dict[str, Any]:
    """An Azure Batch JSON in the exact shape `parse_batch` reads (see the docstring)."""
    out = dict(data)
    if isinstance(out.get("status"), str):
        out["status"] = out["status"].lower()
    for name in ("created_at", *TIMESTAMP_FIELDS):
        if name in out:
            out[name] = _unix(out[name])
    errors = out.get("errors")
    if isinstance(errors, Mapping):
        items = errors.get("data")
        items = [items] if isinstance(items, Mapping) else items
        if isinstance(items, list):
            out["errors"] = {**errors, "data": [_error_item(i) for i in items]}
    out.pop("model", None)
    return out


def file_state(data: Mapping[str, Any]) -> str:
    """A file object's status; one without any (OpenAI-shaped answers) is ready."""
    status = data.get("status")
    return status.lower() if isinstance(status, str) else "processed"


class AzureProvider(OpenAICompatProvider):
    """Azure OpenAI Batch; built with either `api_key` or `token_source` (Entra ID)."""

    key_header, key_prefix = "api-key", ""
    id_patterns = (UUID_ID,)  # request ids

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        *,
        api_style: ApiStyle = "classic",
        api_version: str | None = API_VERSION,
        api_key: str | None = None,
        token_source: TokenSource | None = None,
        deployments: Mapping[str, str] | None = None,
        file_wait_seconds: float = 120.0,
        on_close: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        if (api_key is None) == (token_source is None):
            raise ValueError("an AzureProvider needs exactly one of api_key and token_source")
        super().__init__(name, endpoints, http, api_key=api_key)
        self.api_style: ApiStyle = api_style
        self._prefix = "/openai/v1" if api_style == "v1" else "/openai"
        self._query = {"api-version": api_version} if api_version else {}
        self.deployments = dict(deployments or {})
        self.file_wait_seconds = file_wait_seconds
        self._token = BearerToken(token_source, "an Entra ID token") if token_source else None
        self._on_close = on_close
        # Deployment names are the operator's, not the client's: kept out of messages
        # (those named like their model say nothing the client didn't).
        hidden = sorted({d for m, d in self.deployments.items() if d != m}, key=len, reverse=True)
        names = "|".join(re.escape(d) for d in hidden)
        self._deployment_names = re.compile(rf"(?<![\w.-])(?:{names})(?![\w-])") if hidden else None

    async def close(self) -> None:
        await super().close()
        if self._on_close is not None:
            await self._on_close()

    # -- the wire: every call gets the style's prefix, the api-version and the credential

    async def _auth(self) -> dict[str, str]:
        return await self._token.headers() if self._token is not None else {}

    async def request_raw(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Body = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        query = {**(params or {}), **self._query}
        return await super().request_raw(
            method,
            self._prefix + path,
            json=json,
            data=data,
            params=query or None,
            headers={**(headers or {}), **await self._auth()},
        )

    @asynccontextmanager
    async def stream(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The base's download, with the prefix, the api-version and a fresh token."""
        target = self._prefix + path + (f"?{urlencode(self._query)}" if self._query else "")
        sent = {**(headers or {}), **await self._auth()}
        async with super().stream(target, headers=sent) as chunks:
            yield chunks

    def scrub(self, text: str) -> str:
        if self._token is not None:
            text = self._token.scrub(text)
        if self._deployment_names is not None:
            text = self._deployment_names.sub("[deployment]", text)
        return super().scrub(text)

    def http_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        error = super().http_error(status, body, headers)
        if error.code in RETRYABLE_CODES:
            error.kind = "retryable"
        if status == 401 and self._token is not None:
            self._token.forget()
        return error

    def error_detail(self, body: bytes) -> tuple[str | None, str | None]:
        """Also Azure's `{"statusCode": 401, "message": …}` (a refused bearer token)."""
        message, code = super().error_detail(body)
        if message is None:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None, None
            if isinstance(data, dict) and isinstance(data.get("message"), str):
                return data["message"], None
        return message, code

    # -- files: uploaded translated, and only handed on once Azure has processed them

    async def upload_file(self, file: InputFile) -> str:
        refused: list[ProviderError] = []

        async def lines() -> AsyncIterator[bytes]:
            # A refused line breaks the upload off mid-body (so no partial file is made);
            # aiohttp reports that as a lost connection, so the reason is kept here.
            try:
                async for chunk in rewritten(
                    file, line_translator(self.deployments, self.api_style)
                ):
                    yield chunk
            except ProviderError as exc:
                refused.append(exc)
                raise

        try:
            file_id = await self._upload(file.filename, lines())
        except ProviderError:
            if refused:
                raise refused[0] from None
            raise
        await self._wait_processed(file_id)
        return file_id

    async def _wait_processed(self, file_id: str) -> None:
        """Return once Azure has processed the upload (a create refuses it before)."""
        deadline = time.monotonic() + self.file_wait_seconds
        delay = FILE_POLL_FIRST
        while True:
            data = await self.request_json("GET", f"/files/{path_id(file_id)}")
            state = file_state(data)
            if state == "processed":
                return
            if state in FILE_FAILED:
                await self._discard(file_id)
                details = data.get("status_details")
                why = self.scrub(details) if isinstance(details, str) else state
                raise ProviderError(
                    "bad_request",
                    f"Azure did not accept the input file: {why}",
                    code="invalid_file",
                )
            if time.monotonic() + delay > deadline:
                await self._discard(file_id)
                raise ProviderError("retryable", "Azure had not processed the input file in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, FILE_POLL_MOST)

    async def _discard(self, file_id: str) -> None:
        """Delete an upload the gateway will not use (best effort: the sweep finds it too)."""
        try:
            await self.delete_file(file_id)
        except ProviderError:
            pass

    # -- batches

    def _batch(self, data: Mapping[str, Any]) -> UpstreamBatch:
        return self.scrub_batch(parse_batch(normalize_batch(data)))

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        # 2024-10-21 has no output expiry; v1 takes OpenAI's `output_expires_after`.
        expiry = request.output_expires_after if self.api_style == "v1" else None
        azure = replace(
            request, endpoint=azure_endpoint(request.endpoint), output_expires_after=expiry
        )
        return await super().create_batch(azure)

    async def _listed(
        self, path: str, since: int, query: dict[str, str]
    ) -> AsyncIterator[Mapping[str, Any]]:
        if self.api_style == "v1":
            async for item in super()._listed(path, since, query):
                yield item
            return
        # Classic: no documented order (and files take only `purpose`), so every page is
        # read (`since` = the skew: nothing is older than 0) and the old ones dropped here.
        if path == "/files":
            query = {"purpose": query.get("purpose", "batch")}
        oldest = since - CLOCK_SKEW_SECONDS
        async for item in super()._listed(path, CLOCK_SKEW_SECONDS, query):
            created = _unix(item.get("created_at"))
            if not isinstance(created, int | float) or created >= oldest:
                yield item


class AzureProviderConfig(RemoteConfig):
    """Azure OpenAI Batch: `base_url` is the resource endpoint."""

    # Azure OpenAI global batch: 100,000 requests per file, 200 MB.
    batch_limits: ClassVar[tuple[int, int]] = (100_000, 200 * 1024 * 1024)

    type: Literal["azure"]
    api_style: ApiStyle = "classic"
    # classic: default 2024-10-21; v1: none unless set (e.g. "preview").
    api_version: str | None = None
    auth: Literal["key", "entra"] = "key"
    entra_scope: str = ENTRA_SCOPE
    # The client's model name -> the Global-Batch deployment that runs it.
    deployments: dict[str, str] = Field(default_factory=dict)
    # How long an upload may stay `pending` at Azure before the create gives up (retryable).
    file_wait_seconds: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> AzureProviderConfig:
        if re.search(r"/openai(/v1)?$", self.base_url):
            raise ValueError(
                "base_url is the resource endpoint (https://<resource>.openai.azure.com),"
                " without /openai: api_style picks the path"
            )
        if self.auth == "entra":
            if self.secret_key() is not None:
                raise ValueError("set api_key or auth: entra, not both")
            if not entra_available():
                raise ValueError("auth: entra needs the azure-identity package installed")
        if any(not m or not d for m, d in self.deployments.items()):
            raise ValueError("deployments maps model names to non-empty deployment names")
        return self

    def key_missing(self) -> bool:
        # With Entra ID tokens there is no key; with key auth a missing one disables it.
        return self.auth == "key" and self.secret_key() is None

    def version(self) -> str | None:
        return self.api_version or (API_VERSION if self.api_style == "classic" else None)


def entra_available() -> bool:
    try:
        return importlib.util.find_spec("azure.identity") is not None
    except ModuleNotFoundError:
        return False


def entra_token_source(scope: str) -> tuple[TokenSource, Callable[[], Awaitable[object]]]:
    """(token source, close) on azure-identity's async DefaultAzureCredential, imported
    only when asked for (it is an optional dependency)."""
    credential = importlib.import_module("azure.identity.aio").DefaultAzureCredential()

    async def token() -> tuple[str, float]:
        access = await credential.get_token(scope)
        return access.token, float(access.expires_on)

    return token, credential.close


def build(context: ProviderContext, config: AzureProviderConfig) -> AzureProvider:
    assert context.http is not None
    endpoints = context.endpoints if config.endpoints else DEFAULT_ENDPOINTS[config.api_style]
    token_source, on_close = None, None
    if config.auth == "entra":
        token_source, on_close = entra_token_source(config.entra_scope)
    return AzureProvider(
        context.name,
        endpoints,
        context.http,
        api_style=config.api_style,
        api_version=config.version(),
        api_key=None if token_source else config.secret_key() or "",
        token_source=token_source,
        deployments=config.deployments,
        file_wait_seconds=config.file_wait_seconds,
        on_close=on_close,
    )


TYPE = ProviderType("azure", AzureProviderConfig, build)
