"""HTTP plumbing shared by every adapter that talks to a remote API.

One `ClientSession` per provider for the process lifetime, and one place that
turns transport failures and non-2xx answers into `ProviderError`s whose
messages are safe to show a client: the key, the base URL and upstream ids are
scrubbed out before anything leaves this module.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from providers.base import BaseProvider, ErrorKind, ProviderError

_UPSTREAM_ID = re.compile(r"\b(?:file|batch|msgbatch|req|batch_req)[-_][A-Za-z0-9_-]+")
CHUNK = 256 * 1024
# How much of a streamed download may wait in the client's buffer before reading
# pauses (aiohttp's default, 64 KiB, pauses the socket after every read).
STREAM_BUFFER = 1024 * 1024


def kind_for_status(status: int) -> ErrorKind:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status in (408, 409, 429) or status >= 500:
        return "retryable"
    return "bad_request"


def path_id(value: str) -> str:
    """An upstream id made safe for a URL path segment."""
    return quote(value, safe="")


class HTTPProvider(BaseProvider):
    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        *,
        base_url: str,
        headers: dict[str, str],
        secrets: tuple[str, ...],
        timeout_seconds: float,
    ) -> None:
        super().__init__(name, endpoints)
        self.base_url = base_url.rstrip("/")
        self._headers = headers
        self._secrets = tuple(s for s in (*secrets, self.base_url) if s)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                # Provider APIs authenticate by header; a real jar only costs a
                # cookie filter and update on every call.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return _UPSTREAM_ID.sub("[upstream id]", text)[:1000]

    async def request_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self.session.request(method, self.base_url + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise self.http_error(resp.status, body)
        except aiohttp.ClientError as exc:
            raise ProviderError("retryable", f"connection failed ({type(exc).__name__})") from None
        except TimeoutError:
            raise ProviderError("retryable", "the request timed out") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProviderError(
                "retryable", "the provider sent a response that is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise ProviderError("retryable", "the provider sent an unexpected response")
        return data

    @asynccontextmanager
    async def stream(self, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """GET `path` and yield its body as chunks; errors surface on entry."""
        try:
            async with self.session.get(self.base_url + path, read_bufsize=STREAM_BUFFER) as resp:
                if resp.status >= 400:
                    raise self.http_error(resp.status, await resp.read())
                yield _received(resp.content)
        except aiohttp.ClientError as exc:
            raise ProviderError("retryable", f"connection failed ({type(exc).__name__})") from None
        except TimeoutError:
            raise ProviderError("retryable", "the request timed out") from None

    def http_error(self, status: int, body: bytes) -> ProviderError:
        message, code = self.error_detail(body)
        return ProviderError(
            kind_for_status(status),
            self.scrub(message or f"HTTP {status}"),
            status=status,
            code=code,
        )

    def error_detail(self, body: bytes) -> tuple[str | None, str | None]:
        """(message, code) from an error body; adapters override for other shapes."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message, code = error.get("message"), error.get("code")
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
