"""The Cloud Storage client (`providers/gcs.py`) against the real `gcp-storage-emulator`.

The emulator does resumable uploads (308 with `Range`, status queries), `alt=media`
downloads, prefix listings and deletes; it answers every listing in one page, so paging is
checked on a small aiohttp server speaking the JSON API's list shape, and a lost chunk
answer on a forwarding proxy in front of the emulator that drops one answer.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from providers.base import ProviderError
from providers.gcs import QUANTUM, GCSClient, gs_location
from providers.transport import HTTPSettings
from tests.fakes.vertex_upstream import StorageEmulator

_buckets = itertools.count()


@pytest.fixture(scope="module")
def emulator() -> Iterator[StorageEmulator]:
    try:
        server = StorageEmulator.start()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"cannot start the Cloud Storage emulator: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def bucket(emulator: StorageEmulator) -> str:
    name = f"gcs-{os.getpid()}-{next(_buckets)}"
    emulator.create_bucket(name)
    return name


class Calls:
    """Counts the auth headers asked for and the refusals reported."""

    def __init__(self) -> None:
        self.auth = 0
        self.refused = 0

    async def headers(self) -> dict[str, str]:
        self.auth += 1
        return {"Authorization": "Bearer ya29.test-token"}

    def forget(self) -> None:
        self.refused += 1


def client(url: str, calls: Calls | None = None, chunk: int = QUANTUM) -> GCSClient:
    calls = calls or Calls()
    return GCSClient(
        HTTPSettings(url),
        auth=calls.headers,
        scrub=lambda text: text.replace("secret-bucket", "[redacted]"),
        refused=calls.forget,
        chunk_bytes=chunk,
        retries=2,
    )


async def chunks_of(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read(gcs: GCSClient, bucket: str, name: str) -> bytes:
    async with gcs.download(bucket, name) as chunks:
        return b"".join([chunk async for chunk in chunks])


def test_gs_locations() -> None:
    assert gs_location("gs://my-bucket/a/b/") == ("my-bucket", "a/b")
    assert gs_location("gs://my-bucket") == ("my-bucket", "")
    assert gs_location("s3://my-bucket/a") is None
    assert gs_location("gs://UPPER/a") is None


async def test_a_multi_chunk_upload_reads_back_the_same_bytes(
    emulator: StorageEmulator, bucket: str
) -> None:
    calls = Calls()
    gcs = client(emulator.url, calls)
    data = os.urandom(3 * QUANTUM + 12_345)  # three full chunks and a short last one
    assert await gcs.upload(bucket, "in/big.jsonl", chunks_of(data)) == len(data)
    assert await read(gcs, bucket, "in/big.jsonl") == data
    assert calls.auth >= 5  # the start, four chunks, the download: each with the token

    # An exact multiple of the chunk ends with an empty last chunk naming the total.
    exact = os.urandom(2 * QUANTUM)
    assert await gcs.upload(bucket, "in/exact.jsonl", chunks_of(exact)) == len(exact)
    assert await read(gcs, bucket, "in/exact.jsonl") == exact
    await gcs.close()


async def test_list_download_and_delete(emulator: StorageEmulator, bucket: str) -> None:
    gcs = client(emulator.url)
    for name in ("out/job/a.jsonl", "out/job/b.jsonl", "other/c.jsonl"):
        await gcs.upload(bucket, name, chunks_of(name.encode()))
    names = sorted([item["name"] async for item in gcs.list(bucket, "out/job/")])
    assert names == ["out/job/a.jsonl", "out/job/b.jsonl"]
    found = await gcs.metadata(bucket, "out/job/a.jsonl")
    assert found is not None and found["size"] == str(len("out/job/a.jsonl"))
    assert await gcs.delete(bucket, "out/job/a.jsonl") is True
    assert await gcs.delete(bucket, "out/job/a.jsonl") is False  # already gone
    assert await gcs.metadata(bucket, "out/job/a.jsonl") is None
    with pytest.raises(ProviderError) as missing:
        await read(gcs, bucket, "out/job/a.jsonl")
    assert missing.value.kind == "not_found"
    await gcs.close()


async def test_a_failing_source_leaves_no_object(emulator: StorageEmulator, bucket: str) -> None:
    gcs = client(emulator.url)

    async def broken() -> AsyncIterator[bytes]:
        yield os.urandom(QUANTUM + 10)  # one chunk sent
        raise ProviderError("bad_request", "Line 7: refused")

    with pytest.raises(ProviderError) as info:
        await gcs.upload(bucket, "in/broken.jsonl", broken())
    assert info.value.message == "Line 7: refused"
    assert [item async for item in gcs.list(bucket, "in/")] == []
    await gcs.close()


async def test_listing_reads_every_page_and_raises_on_a_failed_one(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    pages = {"": (["a", "b"], "t1"), "t1": (["c"], "t2"), "t2": (["d"], None)}
    seen: list[dict[str, str]] = []
    fail = {"t2": False}

    async def objects(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        token = request.query.get("pageToken", "")
        if fail.get(token):
            body = {"error": {"code": 503, "message": "backend secret-bucket unavailable"}}
            return web.json_response(body, status=503)
        names, following = pages[token]
        page: dict[str, Any] = {"kind": "storage#objects", "items": [{"name": n} for n in names]}
        if following:
            page["nextPageToken"] = following
        return web.json_response(page)

    app = web.Application()
    app.router.add_get("/storage/v1/b/{bucket}/o", objects)
    server = await aiohttp_server(app)
    gcs = client(str(server.make_url("")).rstrip("/"))
    assert [item["name"] async for item in gcs.list("bkt", "p/")] == ["a", "b", "c", "d"]
    assert seen[0]["prefix"] == "p/" and seen[1]["pageToken"] == "t1"

    fail["t2"] = True
    with pytest.raises(ProviderError) as info:
        [item async for item in gcs.list("bkt", "p/")]
    assert info.value.kind == "retryable" and "secret-bucket" not in info.value.message
    await gcs.close()


async def test_a_lost_chunk_answer_resumes_from_what_was_persisted(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    emulator: StorageEmulator,
    bucket: str,
) -> None:
    """A proxy in front of the emulator forwards the second chunk, then drops its answer:
    the client asks what was persisted and goes on from there."""
    puts: list[str] = []
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        url = emulator.url + request.path_qs
        async with session.request(request.method, url, data=body, headers=headers) as resp:
            answer = await resp.read()
            kept = {k: v for k, v in resp.headers.items() if k.lower() in ("range", "location")}
            if "Location" in kept:
                kept["Location"] = kept["Location"].replace(emulator.url, proxy_url)
            status = resp.status
        if request.method == "PUT":
            puts.append(request.headers.get("Content-Range", ""))
            if len(puts) == 2:
                assert request.transport is not None
                request.transport.abort()  # carried out, answer lost
        return web.Response(status=status, body=answer, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    server = await aiohttp_server(app)
    proxy_url = str(server.make_url("")).rstrip("/")
    gcs = client(proxy_url)
    data = os.urandom(3 * QUANTUM + 99)
    try:
        assert await gcs.upload(bucket, "in/resumed.jsonl", chunks_of(data)) == len(data)
    finally:
        await session.close()
    second = f"bytes {QUANTUM}-{2 * QUANTUM - 1}/*"
    # aiohttp sent the PUT again on a new connection (idempotent), the emulator refused
    # the duplicate, and the status query showed the chunk had arrived: the upload went
    # on from there rather than failing.
    assert puts[1:4] == [second, second, "bytes */*"]
    assert puts[4] == f"bytes {2 * QUANTUM}-{3 * QUANTUM - 1}/*"
    direct = client(emulator.url)
    assert await read(direct, bucket, "in/resumed.jsonl") == data
    await direct.close()
    await gcs.close()


async def test_errors_are_scrubbed_and_a_401_forgets_the_token(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        message = "Invalid Credentials for secret-bucket"
        return web.json_response({"error": {"code": 401, "message": message}}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    server = await aiohttp_server(app)
    calls = Calls()
    gcs = client(str(server.make_url("")).rstrip("/"), calls)
    with pytest.raises(ProviderError) as info:
        await gcs.delete("secret-bucket", "x")
    assert info.value.kind == "auth" and calls.refused == 1
    assert "secret-bucket" not in info.value.message and "Invalid Credentials" in info.value.message
    await gcs.close()
