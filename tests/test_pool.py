"""The providers' connection pool against real servers on loopback: an aiohttp app, and raw
sockets for the answers no well-behaved server gives."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from providers.pool import ConnectError, ConnectionPool, LostConnection

Reply = Callable[[int, bytes], Awaitable[bytes | None]]


def pool_for(url: str, **kw: Any) -> ConnectionPool:
    options = {"connect_timeout": 2.0, "read_timeout": 2.0, **kw}
    return ConnectionPool(url, {"Authorization": "Bearer sk-pool"}, **options)


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
        ConnectionPool("http://x", {"X-Bad": "a\r\nInjected: 1"}, connect_timeout=1, read_timeout=1)
    with pytest.raises(ValueError):
        ConnectionPool("ftp://x", {}, connect_timeout=1, read_timeout=1)


async def test_a_target_with_a_space_is_refused(echo: TestServer) -> None:
    pool = pool_for(str(echo.make_url("/v1")))
    try:
        with pytest.raises(ValueError):
            await pool.request("GET", "/batches/a b HTTP/1.1\r\nX: y")
    finally:
        await pool.close()
