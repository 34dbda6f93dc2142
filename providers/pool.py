"""Kept-alive HTTP/1.1 connections for the providers' small calls (a JSON body each way).

Why not aiohttp's client here: in front of a fast upstream it cost about 220 µs of
CPU per call on the gateway's busiest path, the retrieve of an active batch, and
halved what one process could serve (bench item 1 at c=64: 3,250 req/s through
aiohttp, 6,580 through this pool). This writes one request built from prebuilt
bytes and lets httptools (llhttp, the parser uvicorn uses) read the answer.
Streamed downloads and multipart uploads stay on aiohttp (`transport.py`), which
takes the small calls too for a provider configured with `transport: aiohttp`.

One connection carries one call at a time; idle ones are reused newest first and
dropped after `IDLE_SECONDS`, before servers typically close them. A call that
finds its reused connection closed before any answer arrived is sent once more
on a new one when it is safe to repeat (GET); otherwise the loss is reported,
since the request may have been carried out.

Through an HTTP proxy (`proxy`), an https upstream is reached by a CONNECT tunnel with
TLS started inside it, and an http one by sending the proxy absolute-form targets
(`GET http://host/path`); the direct path is the same code as without a proxy.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from providers.transport import (
    UNSAFE_TARGET,
    USER_AGENT,
    Answer,
    ConnectError,
    HTTPSettings,
    LostConnection,
)

IDLE_SECONDS = 15.0
MAX_IDLE = 64
REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS"})


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._answered = False
        self._framed = False  # the answer says where its body ends
        self._until_close = False
        self._keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's aren't subclasses

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(LostConnection("unreadable answer", answered=True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_close and self._waiter is not None:
            self._until_close = False
            self._keep_alive = False
            self._finish()  # the body ran until the server closed: that is its end
        else:
            self._fail(LostConnection("connection closed", answered=self._answered))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._until_close = not self._framed

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._until_close = False
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    # calls

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed

    def send(self, data: bytes, timeout: float) -> asyncio.Future[Answer]:
        """The answer to `data`; TimeoutError if it is not whole within `timeout` seconds."""
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._answered = self._keep_alive = self._framed = False
        # A plain timer: cheaper than an asyncio.timeout() scope on every call.
        timer = loop.call_later(timeout, self._time_out)
        waiter.add_done_callback(lambda _: timer.cancel())
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        headers = CIMultiDictProxy(CIMultiDict(self._headers))
        body = b"".join(self._body)
        self._headers, self._body = [], []
        if waiter is None or waiter.done():
            return
        try:
            body = _decoded(headers.get("Content-Encoding"), body)
        except (zlib.error, ValueError) as exc:
            waiter.set_exception(LostConnection(f"unreadable answer ({exc})", answered=True))
            return
        waiter.set_result((self._parser.get_status_code(), headers, body))

    def _time_out(self) -> None:
        self._fail(TimeoutError("no whole answer in time"))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if not self.closed:
            self.close()


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to CONNECT; a 2xx means the bytes now go to the upstream."""

    def __init__(self) -> None:
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        self._head += data
        head, found, rest = self._head.partition(b"\r\n\r\n")
        if not found:
            if len(self._head) > 64 * 1024:
                self._settle(ConnectError("the proxy sent an unreadable answer"))
            return
        words = head.split(b"\r\n", 1)[0].split(None, 2)
        status = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        if not 200 <= status < 300:
            self._settle(ConnectError(f"the proxy refused the tunnel (HTTP {status})"))
        elif rest:  # the upstream cannot speak before our TLS hello
            self._settle(ConnectError("the proxy sent an unreadable answer"))
        else:
            self._settle(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(ConnectError("the proxy closed the connection"))

    def _settle(self, exc: ConnectError | None) -> None:
        if self.opened.done():
            return
        if exc is None:
            self.opened.set_result(None)
        else:
            self.opened.set_exception(exc)


def _decoded(encoding: str | None, body: bytes) -> bytes:
    """We ask for identity; a server that compresses anyway still gets read."""
    if encoding is None or encoding.lower() == "identity" or not body:
        return body
    if encoding.lower() in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding.lower() == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported content encoding {encoding[:32]!r}")


class ConnectionPool:
    """Connections to the one origin of `http.base_url`, with `headers` on every request.

    The default `Transport` (`transport.py`): its failures are already in that module's
    terms, ConnectError only for a request never sent. From `http.egress`: the TLS context
    (None: the system store) and the HTTP proxy with its Proxy-Authorization value."""

    def __init__(self, http: HTTPSettings, headers: Mapping[str, str]) -> None:
        parts = urlsplit(http.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL")
        https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if https else 80)
        self._ssl = (http.egress.ssl_context or ssl.create_default_context()) if https else None
        self._prefix = parts.path.rstrip("/")
        head = {"Host": parts.netloc, "User-Agent": USER_AGENT, **headers}
        self._proxy = proxy = http.egress.proxy_address
        self._tunnel_request = b""
        if proxy is not None:
            authority = _authority(self._host, self._port)
            credentials = http.egress.proxy_authorization
            auth = {"Proxy-Authorization": credentials} if credentials else {}
            if https:
                self._tunnel_request = (
                    f"CONNECT {authority} HTTP/1.1\r\n".encode()
                    + _header_lines({"Host": authority, **auth})
                    + b"\r\n"
                )
            else:  # a forward proxy: the whole URL as the target, its credentials on each
                self._prefix = f"http://{authority}{self._prefix}"
                head.update(auth)
        self._head = _header_lines(head) + b"Accept-Encoding: identity\r\n"
        self._connect_timeout = http.connect_timeout
        self._read_timeout = http.read_timeout
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """`target` is the path (and query) under the base URL, already percent-encoded."""
        path = self._prefix + target
        if UNSAFE_TARGET.search(path):
            raise ValueError("the request target holds a space or a control character")
        data = b"".join(
            (
                f"{method} {path} HTTP/1.1\r\n".encode(),
                self._head,
                _header_lines(headers) if headers else b"",
                b"Content-Length: %d\r\n\r\n" % len(body) if body is not None else b"\r\n",
                body or b"",
            )
        )
        for attempt in range(2):
            conn, reused = await self._acquire()
            try:
                answer = await conn.send(data, self._read_timeout)
            except LostConnection as exc:
                conn.close()
                if reused and not exc.answered and method in REPEATABLE and attempt == 0:
                    continue  # the server had closed the idle connection: not sent at all
                raise
            except BaseException:
                conn.close()  # a timeout or a cancel leaves an answer half read
                raise
            self._release(conn)
            return answer
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and now - conn.idle_since < IDLE_SECONDS:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._proxy is not None:
                    return await self._via_proxy(loop, self._proxy), False
                _, conn = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except ConnectError:
            raise
        except (OSError, TimeoutError) as exc:
            raise ConnectError(f"could not connect ({type(exc).__name__})") from None
        return conn, False

    async def _via_proxy(
        self, loop: asyncio.AbstractEventLoop, proxy: tuple[str, int]
    ) -> _Connection:
        """A connection to the proxy: as it is for http, a TLS tunnel through it for https."""
        if self._ssl is None:
            _, conn = await loop.create_connection(_Connection, *proxy)
            return conn
        transport, tunnel = await loop.create_connection(_Tunnel, *proxy)
        conn = _Connection()
        try:
            transport.write(self._tunnel_request)
            await tunnel.opened
            tls = await loop.start_tls(transport, conn, self._ssl, server_hostname=self._host)
        except BaseException:
            transport.close()
            raise
        if tls is None:  # only for a transport already closing
            raise ConnectError("the proxy closed the connection")
        conn.connection_made(tls)  # start_tls does not call it
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and not self._closed and len(self._idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _header_lines(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name[:32]!r} holds a line break or a colon")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
