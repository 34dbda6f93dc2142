"""Hostile input: each gets the error envelope and the right status, and nothing is stored.

Raw sockets play the clients no SDK would be: one that stalls mid-body
(slow-loris), one that hangs up mid-upload, one that sends more than it said.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from gateway.api import SERVICE
from gateway.app import SERVER_ARGS, create_app
from gateway.blobs import WINDOW
from gateway.store import Page
from tests.conftest import Gateway, StartGateway
from tests.support import big_file, chat_file, make_config
from tests.test_errors import assert_envelope

BOUNDARY = "hostileboundary"


def multipart_head(length: int, path: str = "/v1/files") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def part(name: str, *, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length bodies only), read off a raw socket."""
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def stored(gw_dir: Path) -> list[Path]:
    return [p for p in gw_dir.rglob("*") if p.is_file()]


@pytest.fixture
async def impatient(start_gateway: StartGateway, tmp_path: Path) -> Gateway:
    limits = {"upload_idle_seconds": 0.3, "max_request_bytes": 4096}
    return await start_gateway(make_config(tmp_path, limits=limits, poller={"enabled": False}))


STALLS = {
    "before the first part": (multipart_head(100_000), b""),
    "inside a text field": (multipart_head(100_000), part("purpose") + b"bat"),
    "inside the file": (
        multipart_head(100_000),
        part("purpose") + b"batch\r\n" + part("file", filename="a.jsonl") + chat_file(50),
    ),
    "inside a JSON body": (
        b"POST /v1/batches HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 500\r\n\r\n",
        b'{"input_file_id": "file-',
    ),
}


@pytest.mark.parametrize("where", list(STALLS))
async def test_a_slow_loris_gets_408_and_its_connection_is_dropped(
    impatient: Gateway, where: str
) -> None:
    head, body = STALLS[where]
    reader, writer = await asyncio.open_connection(impatient.server.host, impatient.server.port)
    try:
        writer.write(head + body)
        await writer.drain()
        async with asyncio.timeout(5):  # then the client just stalls
            status, headers, raw = await read_response(reader)
            assert await reader.read() == b""  # the gateway hung up: the slot is free
    finally:
        writer.close()
    assert status == 408
    assert headers["connection"] == "close" and headers["x-request-id"]
    assert assert_envelope(orjson.loads(raw))["code"] == "request_timeout"
    assert await impatient.service.store.list_files("default", **LIST_ALL) == EMPTY
    assert stored(impatient.config.blobs.dir) == []
    async with asyncio.timeout(2):
        while impatient.server.runner and impatient.server.runner.server.connections:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)


LIST_ALL: dict[str, Any] = {"purpose": None, "after": None, "limit": 10, "order": "desc"}
EMPTY: Page[Any] = Page([], False)


@pytest.fixture(params=[True, False], ids=["handler_cancellation", "production_default"])
async def running(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """The gateway on a real runner, with or without aiohttp's handler cancellation."""
    app = create_app(make_config(tmp_path, poller={"enabled": False}))
    runner = web.AppRunner(app, handler_cancellation=request.param, **SERVER_ARGS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield app, runner.addresses[0][1], tmp_path / "files"
    await runner.cleanup()


async def test_a_client_that_hangs_up_mid_upload_leaves_nothing(
    running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app, port, blob_dir = running
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(multipart_head(10_000_000))
    writer.write(part("purpose") + b"batch\r\n" + part("file", filename="a.jsonl"))
    writer.write(chat_file(3000))  # a few hundred KB: the blob is being written
    await writer.drain()
    async with asyncio.timeout(5):
        while not list((blob_dir / "tmp").glob("*.part")):
            await asyncio.sleep(0.01)
    writer.close()
    async with asyncio.timeout(5):
        while stored(blob_dir):
            await asyncio.sleep(0.01)
    assert await app[SERVICE].store.list_files("default", **LIST_ALL) == EMPTY
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_json_body_over_the_limit_is_refused_before_it_is_read(
    impatient: Gateway,
) -> None:
    reader, writer = await asyncio.open_connection(impatient.server.host, impatient.server.port)
    try:  # announces 10 MB and sends none of it
        writer.write(
            b"POST /v1/batches HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n"
        )
        async with asyncio.timeout(5):
            status, _, raw = await read_response(reader)
    finally:
        writer.close()
    assert status == 413 and assert_envelope(orjson.loads(raw))["code"] == "request_too_large"


async def test_a_chunked_json_body_is_counted_while_it_streams(impatient: Gateway) -> None:
    reader, writer = await asyncio.open_connection(impatient.server.host, impatient.server.port)
    try:  # no length announced; 5 KB sent (limit 4 KB); the body never ends
        writer.write(
            b"POST /v1/batches HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(5):
            writer.write(b"400\r\n" + b" " * 1024 + b"\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            status, _, raw = await read_response(reader)
    finally:
        writer.close()
    assert status == 413 and assert_envelope(orjson.loads(raw))["code"] == "request_too_large"


async def test_an_upload_announcing_too_much_is_refused_at_once(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(make_config(tmp_path, limits={"max_file_bytes": 10_000}))
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        writer.write(multipart_head(50_000_000))
        async with asyncio.timeout(5):
            status, _, raw = await read_response(reader)
    finally:
        writer.close()
    assert status == 413 and assert_envelope(orjson.loads(raw))["param"] == "file"


async def test_a_50_mb_line_is_refused_and_nothing_is_stored(gateway: Gateway) -> None:
    line = b'{"custom_id": "' + b"x" * (50 * 1024 * 1024) + b'"}\n'
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", io.BytesIO(line), filename="big.jsonl")
    async with gateway.http.post(gateway.url("/v1/files"), data=form) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert "Line 1: the line is longer than the limit" in assert_envelope(body)["message"]
    assert [f async for f in gateway.client.files.list()] == []
    assert stored(gateway.config.blobs.dir) == []


async def test_too_many_form_parts(gateway: Gateway) -> None:
    body = b"".join(part(f"f{i}") + b"x\r\n" for i in range(20)) + f"--{BOUNDARY}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with gateway.http.post(gateway.url("/v1/files"), data=body, headers=headers) as resp:
        assert resp.status == 400
        assert "form parts" in assert_envelope(await resp.json())["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"--x\r\nno headers at all",
        b"garbage without any boundary",
        b'--hostileboundary\r\nContent-Disposition: form-data; name="\x01"\x00\r\n\r\nx',
    ],
)
async def test_malformed_multipart_is_400(gateway: Gateway, body: bytes) -> None:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    async with gateway.http.post(gateway.url("/v1/files"), data=body, headers=headers) as resp:
        assert resp.status == 400
        assert_envelope(await resp.json())
    headers = {"Content-Type": "multipart/form-data"}  # no boundary at all
    async with gateway.http.post(gateway.url("/v1/files"), data=body, headers=headers) as resp:
        assert resp.status == 400


HOSTILE_IDS = [
    "../../etc/passwd",
    "..",
    "file-abc/../../gateway.db",
    "batch_x\\..\\y",
    "' OR '1'='1",
    "file-x'; DROP TABLE files;--",
    "файл-ünïcødé-😀",
    "file-\x00\x01",
    "%2e%2e%2f",
    "x" * 10_240,
]
ID_CALLS = [
    ("GET", "/v1/files/{}"),
    ("GET", "/v1/files/{}/content"),
    ("DELETE", "/v1/files/{}"),
    ("GET", "/v1/batches/{}"),
    ("POST", "/v1/batches/{}/cancel"),
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=lambda s: repr(s[:24]))
async def test_hostile_ids_are_plain_not_found(
    gateway: Gateway, hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for method, template in ID_CALLS:
        url = URL(gateway.url("/")).with_path(
            template.format(quote(hostile, safe="")), encoded=True
        )
        async with gateway.http.request(method, url) as resp:
            assert resp.status == 404, (method, template)
            error = assert_envelope(await resp.json())
            assert hostile not in error["message"] and error["code"] in (None, "unknown_url")
    create = {"input_file_id": hostile, "endpoint": "/v1/chat/completions"}
    async with gateway.http.post(
        gateway.url("/v1/batches"), json={**create, "completion_window": "24h"}
    ) as resp:
        assert resp.status in (400, 404)
        assert hostile not in assert_envelope(await resp.json())["message"]
    for path in ("/v1/files", "/v1/batches"):
        async with gateway.http.get(gateway.url(path), params={"after": hostile}) as resp:
            assert resp.status == 400 and assert_envelope(await resp.json())["param"] == "after"
    assert not any(hostile in r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert stored(gateway.config.blobs.dir) == []


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=10001",
        "limit=-1",
        "limit=abc",
        "limit=1e3",
        "order=sideways",
        "purpose=fine-tune",
        "after=",
    ],
)
async def test_bad_list_parameters(gateway: Gateway, query: str) -> None:
    async with gateway.http.get(gateway.url(f"/v1/files?{query}")) as resp:
        assert resp.status == 400, query
        assert_envelope(await resp.json())


async def test_unknown_endpoints_and_methods(gateway: Gateway) -> None:
    for method, path, status in [
        ("GET", "/v2/files", 404),
        ("GET", "/v1/files/a/b/c", 404),
        ("PATCH", "/v1/files/file-x", 405),
        ("PUT", "/v1/batches/batch_x/cancel", 405),
        ("DELETE", "/v1/batches", 405),
    ]:
        async with gateway.http.request(method, gateway.url(path)) as resp:
            assert resp.status == status, (method, path)
            assert_envelope(await resp.json())
            if status == 405:
                assert resp.headers["Allow"]


async def test_clients_hanging_up_mid_download_leave_no_open_file_or_mapping(
    gateway: Gateway,
) -> None:
    content = big_file(8 * WINDOW)  # far more than the socket buffers take at once
    uploaded = await gateway.client.files.create(
        file=("big.jsonl", io.BytesIO(content)), purpose="batch"
    )
    blob = str(gateway.config.blobs.dir / uploaded.id)

    def held() -> tuple[int, int]:
        """(open descriptors of the blob, mappings of it) in this process, the gateway's."""
        fds = sum(1 for fd in Path("/proc/self/fd").iterdir() if _target(fd) == blob)
        maps = Path("/proc/self/maps").read_text().count(blob)
        return fds, maps

    request = f"GET /v1/files/{uploaded.id}/content HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for _ in range(5):
        reader, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
        writer.write(request)
        assert (await reader.readexactly(12)) == b"HTTP/1.1 200"
        await reader.read(64 * 1024)
        writer.transport.abort()  # gone mid-body: a reset, not a clean close
    for _ in range(100):
        gc.collect()
        if held() == (0, 0):
            break
        await asyncio.sleep(0.02)
    assert held() == (0, 0)
    # The gateway is fine: the next download is whole.
    assert (await gateway.client.files.content(uploaded.id)).content == content


def _target(fd: Path) -> str | None:
    try:
        return os.readlink(fd)
    except OSError:  # closed meanwhile
        return None
