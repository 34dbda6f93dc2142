"""A small Cloud Storage JSON API client on the gateway's aiohttp transport.

What the object-store adapters need and no more (cloud.google.com/storage/docs/json_api):
resumable uploads streamed in chunks, listing under a prefix through every page, streamed
downloads (`alt=media`) and deletes. Calls go through `providers.transport.AiohttpTransport`,
so a provider's proxy, CA file and timeouts apply here as to its API calls, and failures
come out as `ProviderError`s in the same terms (`providers.http`): a failed connect is
retryable, a timeout or reset may have been carried out (ambiguous), a 401 makes the
caller forget its token (`refused`), and every message is scrubbed by the caller's
`scrub` before it leaves this module.

Uploads ("Perform resumable uploads", multiple-chunk): the session is started with the
object's metadata, then every chunk but the last is a multiple of 256 KiB sent with
`Content-Range: bytes a-b/*` and answered 308 with the persisted `Range`; the last one
names the total size. A chunk whose answer was lost is followed by a status query
(`Content-Range: bytes */*`) and the upload resumes from what Google persisted, so memory
is one chunk whatever the object's size (aiohttp itself sends a PUT again when a kept-alive
connection drops; a chunk refused as out of place is checked the same way). An upload
given up (its source failed) is cancelled with a DELETE on the session: no object appears.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson

from providers.base import ByteStream, ProviderError
from providers.http import DEFINITE_STATUSES, kind_for_status, transport_errors
from providers.retry import retry_after_seconds
from providers.transport import UNSAFE_TARGET, AiohttpTransport, HTTPSettings

__all__ = ["QUANTUM", "GCSClient", "gs_location", "gs_uri"]

log = logging.getLogger("providers.gcs")

# Every chunk of a resumable upload but the last is a multiple of this.
QUANTUM = 256 * 1024
_GS = re.compile(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(?:/(.*))?")
_RANGE = re.compile(r"bytes=0-(\d+)")
# A download waits in the client's buffer up to this much before reading pauses.
_READ_BUFFER = 1024 * 1024

Auth = Callable[[], Awaitable[Mapping[str, str]]]
Scrub = Callable[[str], str]


def gs_location(uri: str) -> tuple[str, str] | None:
    """`gs://bucket/a/b/` -> ("bucket", "a/b"); None for anything else."""
    match = _GS.fullmatch(uri.strip())
    if match is None:
        return None
    return match.group(1), (match.group(2) or "").strip("/")


def gs_uri(bucket: str, name: str) -> str:
    return f"gs://{bucket}/{name}"


def _object(bucket: str, name: str) -> str:
    return f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


class GCSClient:
    """One bucket-agnostic client per adapter; `auth` gives the headers of each call."""

    def __init__(
        self,
        http: HTTPSettings,
        *,
        auth: Auth,
        scrub: Scrub,
        refused: Callable[[], None] = lambda: None,
        chunk_bytes: int = 8 * 1024 * 1024,
        retries: int = 3,
    ) -> None:
        if chunk_bytes <= 0 or chunk_bytes % QUANTUM:
            raise ValueError("chunk_bytes must be a positive multiple of 256 KiB")
        self.base_url = http.base_url.rstrip("/")
        self._client = AiohttpTransport(http, {})
        self._auth = auth
        self._scrub = scrub
        self._refused = refused
        self.chunk_bytes = chunk_bytes
        self.retries = retries

    async def close(self) -> None:
        await self._client.close()

    # --- errors ------------------------------------------------------------------

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        """A non-2xx answer; Google's `{"error": {"code", "message", "errors"}}` body."""
        if status == 401:
            self._refused()
        message = None
        try:
            data = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        text = self._scrub(f"Cloud Storage: {message or f'HTTP {status}'}")
        return ProviderError(
            kind_for_status(status),
            text,
            status=status,
            retry_after=retry_after_seconds(headers),
            ambiguous=status not in DEFINITE_STATUSES,
        )

    async def _call(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        sent = {**(headers or {}), **await self._auth()}
        with transport_errors():
            return await self._client.request(method, target, body, sent)

    async def _json(self, method: str, target: str, body: Any = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else None
        data = orjson.dumps(body) if body is not None else None
        status, answer_headers, raw = await self._call(method, target, data, headers)
        if status >= 400:
            raise self.error(status, raw, answer_headers)
        try:
            parsed = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ProviderError("retryable", "Cloud Storage sent an unreadable answer")
        return parsed

    # --- objects -----------------------------------------------------------------

    async def list(self, bucket: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every object whose name starts with `prefix`, through every page; a page that
        can't be read raises, so no caller takes a partial listing for a whole one."""
        token: str | None = None
        while True:
            query = {"prefix": prefix, "maxResults": "1000"}
            if token:
                query["pageToken"] = token
            page = await self._json(
                "GET", f"/storage/v1/b/{quote(bucket, safe='')}/o?" + urlencode(query)
            )
            items = page.get("items") or []
            if not isinstance(items, list):
                raise ProviderError("retryable", "Cloud Storage sent an unreadable listing")
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    yield item
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return

    async def metadata(self, bucket: str, name: str) -> dict[str, Any] | None:
        """The object's resource (name, size, timeCreated, ...); None when it is not there."""
        status, headers, raw = await self._call("GET", _object(bucket, name))
        if status == 404:
            return None
        if status >= 400:
            raise self.error(status, raw, headers)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise ProviderError("retryable", "Cloud Storage sent an unreadable answer")
        return data

    async def delete(self, bucket: str, name: str) -> bool:
        """Delete one object; False when it was not there."""
        status, headers, raw = await self._call("DELETE", _object(bucket, name))
        if status == 404:
            return False
        if status >= 400:
            raise self.error(status, raw, headers)
        return True

    def download(self, bucket: str, name: str) -> ByteStream:
        """The object's bytes as chunks; entering performs the request (a missing object
        raises `not_found` before anything is yielded)."""
        return self._download(bucket, name)

    @asynccontextmanager
    async def _download(self, bucket: str, name: str) -> AsyncIterator[AsyncIterator[bytes]]:
        target = _object(bucket, name) + "?alt=media"
        headers = await self._auth()
        with transport_errors():
            opened = self._client.open("GET", target, None, headers, read_bufsize=_READ_BUFFER)
            async with opened as resp:
                if resp.status >= 400:
                    raise self.error(resp.status, await resp.read(), resp.headers)
                yield _chunks(resp.content.iter_chunks())

    # --- resumable upload ---------------------------------------------------------

    async def upload(
        self,
        bucket: str,
        name: str,
        chunks: AsyncIterable[bytes],
        content_type: str = "application/jsonl",
    ) -> int:
        """Stream `chunks` into one object; returns its size. Nothing is visible under the
        name until the last chunk is in; a failing source cancels the session."""
        session = await self._start(bucket, name, content_type)
        buffer = bytearray()
        offset = 0  # what Google has persisted: the buffer holds the bytes from there
        try:
            async for chunk in chunks:
                buffer += chunk
                while len(buffer) >= self.chunk_bytes:
                    offset = await self._advance(session, buffer, offset, None)
            total = offset + len(buffer)
            stalls = 0
            while (moved := await self._put(session, buffer, offset, total)) is not None:
                stalls = 0 if moved > offset else stalls + 1
                if stalls > self.retries:
                    raise ProviderError("retryable", "Cloud Storage did not complete an upload")
                offset = moved
        except BaseException:
            await self._cancel(session)
            raise
        return total

    async def _advance(
        self, session: str, buffer: bytearray, offset: int, total: int | None
    ) -> int:
        """One non-final chunk, sent until some of it is persisted."""
        for _ in range(self.retries + 1):
            moved = await self._put(session, buffer, offset, total)
            if moved is None:  # only a last chunk can complete an object
                raise ProviderError("retryable", "Cloud Storage ended an upload early")
            if moved > offset:
                return moved
        raise ProviderError("retryable", "Cloud Storage took none of an upload chunk")

    async def _start(self, bucket: str, name: str, content_type: str) -> str:
        query = urlencode({"uploadType": "resumable", "name": name})
        target = f"/upload/storage/v1/b/{quote(bucket, safe='')}/o?{query}"
        headers = {"Content-Type": "application/json", "X-Upload-Content-Type": content_type}
        body = orjson.dumps({"name": name, "contentType": content_type})
        status, answer_headers, raw = await self._call("POST", target, body, headers)
        if status >= 400:
            raise self.error(status, raw, answer_headers)
        location = answer_headers.get("Location")
        if not location:
            raise ProviderError("retryable", "Cloud Storage sent no upload session")
        return self._own_target(location)

    def _own_target(self, url: str) -> str:
        """The session URI as a path on our storage URL: the token goes nowhere else."""
        unusable = ProviderError("retryable", "Cloud Storage sent an unusable upload session")
        if UNSAFE_TARGET.search(url):
            raise unusable
        if url.startswith(self.base_url + "/"):
            return url.removeprefix(self.base_url)
        parts = urlsplit(url)
        if not parts.path.startswith("/"):
            raise unusable
        return parts.path + (f"?{parts.query}" if parts.query else "")

    async def _put(
        self, session: str, buffer: bytearray, offset: int, total: int | None
    ) -> int | None:
        """Send the buffer's first chunk at `offset` (all of it, the last one, when `total`
        is known); drop what Google persisted from the buffer and return the new offset,
        or None once the object is complete. A lost or 5xx answer is followed by a
        status query, so a chunk that did arrive is not sent twice."""
        size = len(buffer)
        if total is None:
            size = min(size, self.chunk_bytes)
            size -= size % QUANTUM
        data = bytes(memoryview(buffer)[:size])
        end = "*" if total is None else str(total)
        span = f"bytes {offset}-{offset + size - 1}/{end}" if size else f"bytes */{end}"
        answer = await self._attempt("PUT", session, data, span)
        if answer is not None and answer[0] in (400, 416):
            # aiohttp sends an idempotent PUT again by itself when a kept-alive connection
            # drops, so the chunk may have been taken by the first one, and this answer
            # is the refusal of a duplicate: what was persisted decides.
            refused, answer = answer, await self._attempt("PUT", session, b"", f"bytes */{end}")
            if answer is None or answer[0] != 308 or _persisted(answer[1]) <= offset:
                answer = refused
        for attempt in range(self.retries):
            if answer is not None and not _transient(answer[0]):
                break
            await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
            answer = await self._attempt("PUT", session, b"", f"bytes */{end}")
        if answer is None:
            raise ProviderError(
                "retryable", "Cloud Storage did not answer an upload", ambiguous=True
            )
        status, headers, raw = answer
        if status in (200, 201) and total is not None:
            buffer.clear()
            return None
        if status != 308:
            raise self.error(status, raw, headers)
        persisted = _persisted(headers)
        if not offset <= persisted <= offset + size:
            raise ProviderError("retryable", "Cloud Storage lost part of an upload")
        del buffer[: persisted - offset]
        return persisted

    async def _attempt(
        self, method: str, session: str, data: bytes, span: str
    ) -> tuple[int, Mapping[str, str], bytes] | None:
        """One call on the session; None when its answer was lost."""
        try:
            return await self._call(method, session, data, {"Content-Range": span})
        except ProviderError as exc:
            log.debug("upload call failed (%s); asking what was persisted", exc.kind)
            return None

    async def _cancel(self, session: str) -> None:
        try:
            await self._call("DELETE", session)
        except ProviderError as exc:
            # Best effort: an unfinished session makes no object and expires in a week.
            log.debug("could not cancel an upload session (%s)", exc.kind)


def _transient(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _persisted(headers: Mapping[str, str]) -> int:
    """Bytes persisted so far, from a 308's `Range: bytes=0-N` (none: nothing yet)."""
    match = _RANGE.fullmatch((headers.get("Range") or "").strip())
    return int(match.group(1)) + 1 if match else 0


async def _chunks(pieces: AsyncIterator[tuple[bytes, bool]]) -> AsyncIterator[bytes]:
    with transport_errors():
        async for data, _ in pieces:
            if data:
                yield data
