"""HTTP plumbing shared by every adapter that talks to a remote API.

Per provider, for the process lifetime: a `Transport` for the small JSON calls (the
kept-alive pool of `pool.py`, or aiohttp's client for `transport: aiohttp`), and an
aiohttp session for multipart uploads and streamed downloads (`transport.py`). All of
it is set by one `HTTPSettings`. One place turns transport failures and non-2xx
answers into `ProviderError`s whose messages are safe to show a client: the key,
the base URL and upstream ids are scrubbed out before anything leaves this module.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson

from providers.base import BaseProvider, ErrorKind, ProviderError, UpstreamBatch
from providers.pool import ConnectionPool
from providers.retry import retry_after_seconds
from providers.transport import (
    AiohttpTransport,
    Body,
    ConnectError,
    HTTPSettings,
    Transport,
    aiohttp_failure,
)

# What any provider's message may carry that is not the gateway's to show: OpenAI-style
# upstream ids, URLs, host:port pairs and addresses, organization and project ids, and API
# keys (its own, already redacted exactly, or any other key-shaped token it echoes). A
# provider type's own id shapes are its adapter's `id_patterns`.
_SCRUBBED = (
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+"), "[url]"),
    (re.compile(r"\b(?:file|batch|req|batch_req)[-_][A-Za-z0-9_-]+"), "[upstream id]"),
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}"), "[redacted]"),
    (re.compile(r"\borg-[A-Za-z0-9]{4,}"), "[organization]"),
    (re.compile(r"\bproj_[A-Za-z0-9]{4,}"), "[project]"),
    (re.compile(r"\[[0-9A-Fa-f:]+\](?::\d{1,5})?"), "[host]"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"), "[host]"),
    (re.compile(r"\b(?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*:\d{2,5}\b"), "[host]"),
)
# Batch and request ids of the providers that use UUIDs (Azure, Mistral, Together).
UUID_ID = (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "[upstream id]")
CHUNK = 256 * 1024
# How much of a streamed download may wait in the client's buffer before reading
# pauses (aiohttp's default, 64 KiB, pauses the socket after every read).
STREAM_BUFFER = 1024 * 1024


# The answers that prove a request was not carried out: the provider rejected it before
# doing anything. Any other status (5xx, 408, a gateway's 502 in front of the provider)
# may come after the work was done.
DEFINITE_STATUSES = frozenset({400, 401, 403, 404, 407, 409, 413, 415, 422, 429})


def kind_for_status(status: int) -> ErrorKind:
    if status in (401, 403, 407):  # 407: our proxy refused the gateway's credentials
        return "auth"
    if status == 404:
        return "not_found"
    if status in (408, 409, 429) or status >= 500:
        return "retryable"
    return "bad_request"


def transport_error(exc: BaseException) -> ProviderError:
    """A failure below HTTP. Only a failed connect proves the request never arrived."""
    if isinstance(exc, aiohttp.ClientError):  # a fallback: the transports raise in pool terms
        exc = aiohttp_failure(exc)
    if isinstance(exc, ConnectError):
        return ProviderError("retryable", str(exc))
    if isinstance(exc, TimeoutError):
        return ProviderError("retryable", "the request timed out", ambiguous=True)
    message = f"connection failed ({type(exc).__name__})"
    return ProviderError("retryable", message, ambiguous=True)


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An upstream answer of any status, for callers that act on non-2xx themselves."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@contextmanager
def transport_errors() -> Iterator[None]:
    """Connection failures and timeouts as retryable ProviderErrors (no URL in the text)."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise transport_error(exc) from None


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Non-blank JSONL lines from a chunked body (a line may span chunks)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def path_id(value: str) -> str:
    """An upstream id made safe for a URL path segment."""
    return quote(value, safe="")


class HTTPProvider(BaseProvider):
    # Which key of the error object names the error: OpenAI's envelope says `code`,
    # Anthropic's `{"type": "error", "error": {"type", "message"}}` says `type`.
    error_code_key = "code"
    # How the API key is sent: OpenAI's `Authorization: Bearer <key>`; Anthropic's
    # `x-api-key: <key>`.
    key_header = "Authorization"
    key_prefix = "Bearer "
    # This provider type's own id and resource-name shapes, with what replaces them; they
    # are scrubbed from every message before the generic shapes above.
    id_patterns: tuple[tuple[re.Pattern[str], str], ...] = ()

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`api_key`: sent on every call and scrubbed from every message; `headers`: any
        other the adapter sends on every call."""
        super().__init__(name, endpoints)
        self.base_url = http.base_url.rstrip("/")
        auth = {self.key_header: self.key_prefix + api_key} if api_key else {}
        headers = {**auth, **(headers or {})}
        secrets = (api_key, *http.egress.secrets, self.base_url)
        self._secrets = tuple(s for s in secrets if s)
        self._host = urlsplit(self.base_url).hostname or ""
        # Uploads and downloads always; the small calls too unless the pool takes them.
        self._client = AiohttpTransport(http, headers)
        self._transport: Transport = self._client
        if http.transport == "pool":
            self._transport = ConnectionPool(http, headers)

    async def close(self) -> None:
        if self._transport is not self._client:
            await self._transport.close()
        await self._client.close()

    def scrub(self, text: str) -> str:
        """A provider's message made safe for a client and a log line."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        for pattern, replacement in (*self.id_patterns, *_SCRUBBED):
            text = pattern.sub(replacement, text)
        return text.replace(self._host, "[host]")[:1000] if self._host else text[:1000]

    def scrub_batch(self, batch: UpstreamBatch) -> UpstreamBatch:
        """The batch with its `errors` messages scrubbed like any relayed message."""
        for error in batch.errors or ():
            if isinstance(error.get("message"), str):
                error["message"] = self.scrub(error["message"])
        return batch

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
        """One request; only transport failures raise (as retryable ProviderErrors).

        A body of bytes or JSON goes through the provider's transport; a form or an open
        file (uploads, big request bodies) is streamed by aiohttp.
        """
        with transport_errors():
            if json is not None:
                data = orjson.dumps(json)
                headers = {"Content-Type": "application/json", **(headers or {})}
            target = f"{path}?{urlencode(params)}" if params else path
            if data is None or isinstance(data, bytes):
                answer = await self._transport.request(method, target, data, headers)
            else:
                answer = await self._client.request(method, target, data, headers)
            return RawResponse(*answer)

    async def request_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = await self.request_raw(method, path, **kwargs)
        if resp.status >= 400:
            raise self.http_error(resp.status, resp.body, resp.headers)
        try:
            data = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            # The request was carried out, but what came back is unreadable.
            raise ProviderError(
                "retryable", "the provider sent an unreadable response", ambiguous=True
            )
        return data

    @asynccontextmanager
    async def stream(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """GET `path` and yield its body as chunks; errors surface on entry."""
        with transport_errors():
            opened = self._client.open("GET", path, None, headers, read_bufsize=STREAM_BUFFER)
            async with opened as resp:
                if resp.status >= 400:
                    raise self.http_error(resp.status, await resp.read(), resp.headers)
                yield _received(resp.content)

    def http_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        message, code = self.error_detail(body)
        return ProviderError(
            kind_for_status(status),
            self.scrub(message or f"HTTP {status}"),
            status=status,
            code=code,
            retry_after=retry_after_seconds(headers),
            ambiguous=status not in DEFINITE_STATUSES,
        )

    def error_detail(self, body: bytes) -> tuple[str | None, str | None]:
        """(message, code) from an error body `{"error": {"message", <error_code_key>}}`."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message, code = error.get("message"), error.get(self.error_code_key)
            return (
                message if isinstance(message, str) else None,
                code if isinstance(code, str) else None,
            )
        if isinstance(error, str):
            return error, None
        return None, None


async def _received(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body in the pieces the socket delivered: no re-slicing or joining copies."""
    async for data, _ in content.iter_chunks():
        if data:
            yield data
