"""The providers' connection pool against real servers on loopback: an aiohttp app, and raw
sockets for the answers no well-behaved server gives. The aiohttp transport, the other
`Transport`, must answer and fail exactly as the pool does."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from providers.http import transport_error
from providers.pool import ConnectionPool
from providers.transport import (
    AiohttpTransport,
    ConnectError,
    HTTPSettings,
    LostConnection,
    Transport,
)

Reply = Callable[[int, bytes], Awaitable[bytes | None]]
TRANSPORTS = ("pool", "aiohttp")
HEADERS = {"Authorization": "Bearer sk-pool"}


def make_transport(kind: str, http: HTTPSettings, headers: Mapping[str, str]) -> Transport:
    """What `HTTPProvider` builds for `transport: <kind>`."""
    return ConnectionPool(http, headers) if kind == "pool" else AiohttpTransport(http, headers)


def settings(url: str, **kw: Any) -> HTTPSettings:
    return HTTPSettings(url, **{"connect_timeout": 2.0, "read_timeout": 2.0, **kw})


def pool_for(url: str, **kw: Any) -> ConnectionPool:
    return ConnectionPool(settings(url, **kw), HEADERS)


@pytest.fixture
async def echo(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> TestServer:
    """Echoes each request; counts the connections it was carried on."""
    peers: set[tuple[str, int]] = set()

    async def handle(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": (await request.read()).decode(),
                "connections": len(peers),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await aiohttp_server(app)


async def test_calls_carry_the_headers_and_body_and_reuse_one_connection(
    echo: TestServer,
) -> None:
    pool = pool_for(str(echo.make_url("/v1")))
    try:
        status, headers, body = await pool.request("GET", "/batches?limit=2")
        assert status == 200 and headers["content-type"].startswith("application/json")
        first = orjson.loads(body)
        assert first["path"] == "/v1/batches?limit=2"
        assert first["headers"]["Authorization"] == "Bearer sk-pool"
        assert first["headers"]["User-Agent"] == "batch-gateway"
        sent = b'{"a": 1}'
        _, _, body = await pool.request(
            "POST", "/batches", sent, {"Content-Type": "application/json"}
        )
        second = orjson.loads(body)
        assert second["method"] == "POST" and second["body"] == sent.decode()
        assert second["headers"]["Content-Type"] == "application/json"
        for _ in range(5):
            _, _, body = await pool.request("GET", "/batches/x")
        assert orjson.loads(body)["connections"] == 1  # kept alive throughout
    finally:
        await pool.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Reply], Awaitable[str]]]:
    """A socket server whose `reply(n, request)` gives the bytes to answer the n-th
    request on a connection with (None: close without answering)."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(reply: Reply) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            n = 0
            try:
                while head := await reader.readuntil(b"\r\n\r\n"):
                    n += 1
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    request = head + await reader.readexactly(length)
                    answer = await reply(n, request)
                    if answer is None:
                        break
                    writer.write(answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for writer in writers:  # a handler may still be waiting (the hanging one)
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def ok(body: bytes, *extra: str) -> bytes:
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{h}\r\n" for h in extra)
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def test_a_get_whose_idle_connection_was_dropped_is_sent_again(
    raw_server: Callable[[Reply], Awaitable[str]],
) -> None:
    connections = []

    async def reply(n: int, request: bytes) -> bytes | None:
        if n == 1:
            connections.append(request)
            return ok(b"{}")
        return None  # the server dropped the kept-alive connection without answering

    pool = pool_for(await raw_server(reply))
    try:
        await pool.request("GET", "/batches/a")
        assert (await pool.request("GET", "/batches/b"))[0] == 200
        assert len(connections) == 2  # the second call went out again, on a new connection
        # A POST may have been carried out: its loss is reported, not repeated.
        with pytest.raises(LostConnection) as lost:
            await pool.request("POST", "/batches", b"{}")
        assert lost.value.answered is False
        assert len(connections) == 2
    finally:
        await pool.close()


async def test_chunked_gzip_and_until_close_answers_are_read_whole(
    raw_server: Callable[[Reply], Awaitable[str]],
) -> None:
    payload = b'{"id": "batch_1", "status": "in_progress"}'
    answers = {
        "/v1/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:10], payload[10:]))
        + b"0\r\n\r\n",
        "/v1/gzip": ok(gzip.compress(payload), "Content-Encoding: gzip"),
        "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload,
    }

    async def reply(n: int, request: bytes) -> bytes | None:
        path = request.split(b" ")[1].decode()
        return answers[path]

    pool = pool_for(await raw_server(reply))
    try:
        for path in ("/chunked", "/gzip", "/chunked"):
            assert (await pool.request("GET", path))[2] == payload
    finally:
        await pool.close()

    # A body that ends when the server closes the connection.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answers["close"])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = pool_for(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        assert (await pool.request("GET", "/close"))[2] == payload
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def test_failures_are_told_apart(raw_server: Callable[[Reply], Awaitable[str]]) -> None:
    async def hang(n: int, request: bytes) -> bytes | None:
        await asyncio.sleep(30)
        return None

    pool = pool_for(await raw_server(hang), read_timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/batches/a")
    finally:
        await pool.close()

    async def garbage(n: int, request: bytes) -> bytes | None:
        return b"NOT HTTP AT ALL\r\n\r\n"

    pool = pool_for(await raw_server(garbage))
    try:
        with pytest.raises(LostConnection) as lost:
            await pool.request("GET", "/batches/a")
        assert lost.value.answered is True
    finally:
        await pool.close()

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = pool_for(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectError, match="could not connect"):
        await pool.request("GET", "/batches/a")


def test_nothing_can_split_a_request() -> None:
    with pytest.raises(ValueError):
        ConnectionPool(HTTPSettings("http://x"), {"X-Bad": "a\r\nInjected: 1"})
    with pytest.raises(ValueError):
        ConnectionPool(HTTPSettings("ftp://x"), {})


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_a_target_with_a_space_is_refused(echo: TestServer, kind: str) -> None:
    transport = make_transport(kind, settings(str(echo.make_url("/v1"))), HEADERS)
    try:
        with pytest.raises(ValueError):
            await transport.request("GET", "/batches/a b HTTP/1.1\r\nX: y")
    finally:
        await transport.close()


# -- the same on both transports ---------------------------------------------------------


async def test_both_transports_give_the_same_answers(
    raw_server: Callable[[Reply], Awaitable[str]],
) -> None:
    """Byte for byte the same answer, read by each: status, every header, decoded body."""
    payload = b'{"id": "batch_1", "status": "in_progress"}'
    answers = {
        "/v1/plain": ok(payload, "Content-Type: application/json", "X-Request-Id: req_1"),
        "/v1/twice": ok(b"{}", "Set-Cookie: a=1", "Set-Cookie: b=2", "Retry-After: 3"),
        "/v1/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (payload[:10], payload[10:]))
        + b"0\r\n\r\n",
        "/v1/gzip": ok(gzip.compress(payload), "Content-Encoding: gzip"),
        "/v1/missing": b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
        + b'Content-Length: 28\r\n\r\n{"error": {"message": "no"}}',
        "/v1/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    }
    sent: list[bytes] = []

    async def reply(n: int, request: bytes) -> bytes | None:
        sent.append(request)
        return answers[request.split(b" ")[1].decode()]

    url = await raw_server(reply)
    seen: dict[str, list[Any]] = {}
    for kind in TRANSPORTS:
        transport = make_transport(kind, settings(url), HEADERS)
        try:
            for path in answers:
                method, body = ("POST", b'{"a": 1}') if path == "/v1/plain" else ("GET", None)
                status, headers, content = await transport.request(method, path[3:], body)
                # Names compare case-blind: aiohttp spells the ones it knows its own way.
                fields = [(name.lower(), value) for name, value in headers.items()]
                seen.setdefault(path, []).append((status, fields, content))
        finally:
            await transport.close()
    for path, (pooled, aiohttp_read) in seen.items():
        assert pooled == aiohttp_read, path
    assert seen["/v1/gzip"][0][2] == payload and seen["/v1/missing"][0][0] == 404
    # Both sent the key, the gateway's name and a request for an uncompressed answer.
    for request in sent:
        head = request.lower()
        assert b"authorization: bearer sk-pool" in head and b"user-agent: batch-gateway" in head
        assert b"accept-encoding: identity" in head


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_both_transports_fail_the_same_way(
    raw_server: Callable[[Reply], Awaitable[str]], kind: str
) -> None:
    """Only a refused connect is definite; a timeout or a connection lost after the
    request went out may have been carried out (a create is then looked up)."""

    async def hang(n: int, request: bytes) -> bytes | None:
        await asyncio.sleep(30)
        return None

    async def reset(n: int, request: bytes) -> bytes | None:
        return None  # read the whole request, then close without a word

    async def garbage(n: int, request: bytes) -> bytes | None:
        return b"NOT HTTP AT ALL\r\n\r\n"

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    cases = [
        (nobody, ConnectError, False, "could not connect (ConnectionRefusedError)"),
        (await raw_server(hang), TimeoutError, True, "the request timed out"),
        (await raw_server(reset), LostConnection, True, "connection failed (LostConnection)"),
        (await raw_server(garbage), LostConnection, True, "connection failed (LostConnection)"),
    ]
    for url, raised, ambiguous, message in cases:
        transport = make_transport(kind, settings(url, read_timeout=0.3), HEADERS)
        try:
            with pytest.raises(raised) as failed:
                await transport.request("POST", "/batches", b'{"a": 1}')
        finally:
            await transport.close()
        error = transport_error(failed.value)
        assert (error.kind, error.ambiguous, error.message) == ("retryable", ambiguous, message)
