"""The gateway keeps its own copy of a remote provider's output files once a batch ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.api import SERVICE
from gateway.keeper import OutputKeeper
from gateway.result_lines import ResultLines
from gateway.service import GatewayService
from gateway.store import FileRecord
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import ANYAPI_ENDPOINTS, UPSTREAM, make_openai_upstream
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_openai_provider import create, upload

KEY = "sk-keeper-upstream-789"
CONTENT = "GET /v1/files/"


@pytest.fixture
async def start_remote(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> Callable[..., Awaitable[tuple[Gateway, Any]]]:
    async def start(*, keep: bool = True) -> tuple[Gateway, Any]:
        upstream = await aiohttp_server(make_openai_upstream(KEY))
        provider = {
            "type": "openai",
            "base_url": str(upstream.make_url("/v1")),
            "api_key": KEY,
            "endpoints": sorted(ANYAPI_ENDPOINTS),
            "retry_backoff_seconds": 0,
            "max_retries": 0,
        }
        config = make_config(
            tmp_path,
            providers={"anyapi": provider},
            default="anyapi",
            blobs={"dir": "./files", "keep_provider_outputs": keep},
            # Without keeping, accounting would be one more reader of the provider's files.
            usage={"enabled": keep},
        )
        gw = await start_gateway(config)
        return gw, upstream.app[UPSTREAM]

    return start


def service_of(gw: Gateway) -> GatewayService:
    return gw.server.app[SERVICE]


async def finished_batch(gw: Gateway) -> tuple[str, str]:
    """(output file id, error file id) of a batch with good lines and one failing line."""
    content = chat_file(3) + b'{"custom_id": "bad", "method": "POST", "url": '
    content += b'"/v1/chat/completions", "body": {"model": "fail-model", "messages": []}}\n'
    batch = await create(gw, await upload(gw, content))
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    return done.output_file_id, done.error_file_id


async def kept(gw: Gateway, file_id: str, timeout: float = 5.0) -> FileRecord:
    store = service_of(gw).store
    for _ in range(int(timeout / 0.02)):
        record = await store.get_file(file_id)
        if record is not None and record.blob is not None:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"{file_id} was not kept")


def rewritten(upstream: Any, record: FileRecord) -> bytes:
    """What the gateway serves for `record`: the provider's bytes as OpenAI lines."""
    assert record.batch_id is not None and record.upstream_id is not None
    lines = ResultLines(record.batch_id, record.id)
    return lines.feed(upstream.files[record.upstream_id]["_content"]) + lines.finish()


def content_calls(upstream: Any) -> int:
    return sum(1 for method, path in upstream.requests if f"{method} {path}".startswith(CONTENT))


async def test_outputs_are_kept_when_the_batch_ends_and_served_without_the_provider(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
) -> None:
    gw, upstream = await start_remote()
    output_id, error_id = await finished_batch(gw)
    by_gateway_id = {}
    for file_id in (output_id, error_id):
        record = await kept(gw, file_id)
        # The copy is the provider's file rewritten into OpenAI lines with gateway ids.
        by_gateway_id[file_id] = rewritten(upstream, record)
        assert b"batch_req_UP" not in by_gateway_id[file_id]
        assert record.bytes == len(by_gateway_id[file_id])
        assert (gw.config.blobs.dir / record.blob).read_bytes() == by_gateway_id[file_id]

    # The provider now fails every file read: downloads still work, from the copy.
    calls = content_calls(upstream)
    upstream.fail_on, upstream.fail_next = CONTENT, [500] * 20
    for file_id, expected in by_gateway_id.items():
        assert (await gw.client.files.content(file_id)).content == expected
        async with gw.http.get(gw.url(f"/v1/files/{file_id}/content")) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(expected))
            assert await resp.read() == expected
        assert (await gw.client.files.retrieve(file_id)).bytes == len(expected)
    assert content_calls(upstream) == calls
    assert len(upstream.fail_next) == 20


async def test_a_failed_copy_is_tried_again_after_a_backoff(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, upstream = await start_remote(keep=False)  # no background keeper: sweeps by hand
    output_id, error_id = await finished_batch(gw)
    svc = service_of(gw)
    keeper = OutputKeeper(svc, "test-owner", lease_seconds=60, retry_base_seconds=0.2)

    upstream.fail_on, upstream.fail_next = CONTENT, [500, 500]
    with caplog.at_level(logging.WARNING, logger="gateway.keeper"):
        assert await keeper.sweep() == 0
    assert "failed (retryable)" in caplog.text
    assert not list((gw.config.blobs.dir / "tmp").iterdir())  # no partial copy left
    calls = content_calls(upstream)
    assert await keeper.sweep() == 0  # not due yet: the provider is not asked again
    assert content_calls(upstream) == calls

    await asyncio.sleep(0.25)
    assert await keeper.sweep() == 2
    assert (await kept(gw, output_id)).blob is not None
    assert (await kept(gw, error_id)).blob is not None
    assert await keeper.sweep() == 0


async def test_a_relayed_file_answers_head_without_asking_the_provider(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
) -> None:
    gw, upstream = await start_remote(keep=False)
    output_id, _ = await finished_batch(gw)
    calls = content_calls(upstream)
    url = gw.url(f"/v1/files/{output_id}/content")
    async with gw.http.head(url) as resp:
        assert resp.status == 200 and await resp.read() == b""
    assert content_calls(upstream) == calls
    record = await service_of(gw).store.get_file(output_id)
    assert record is not None and record.blob is None and record.upstream_id is not None
    async with gw.http.get(url) as resp:  # relayed, on the same connection
        assert await resp.read() == rewritten(upstream, record)
    assert content_calls(upstream) == calls + 1
    record = await service_of(gw).store.get_file(output_id)
    assert record is not None and record.blob is None  # keeping is off: nothing kept


def keeping_on(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """`keep_provider_outputs` on, with no keeper running: only downloads can keep."""
    svc = service_of(gw)
    blobs = svc.config.blobs.model_copy(update={"keep_provider_outputs": True})
    monkeypatch.setattr(svc, "config", svc.config.model_copy(update={"blobs": blobs}))


async def test_a_relayed_download_keeps_the_copy_it_relayed(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, upstream = await start_remote(keep=False)
    output_id, _ = await finished_batch(gw)
    keeping_on(gw, monkeypatch)
    url = gw.url(f"/v1/files/{output_id}/content")
    async with gw.http.get(url) as resp:  # not kept yet: relayed, and kept on the way
        assert resp.headers["Transfer-Encoding"] == "chunked"
        relayed = await resp.read()
    record = await service_of(gw).store.get_file(output_id)
    assert record is not None and record.blob is not None  # before the client saw the end
    assert relayed == rewritten(upstream, record)
    assert (await gw.client.files.retrieve(output_id)).bytes == len(relayed)
    calls = content_calls(upstream)
    async with gw.http.get(url) as resp:
        assert resp.headers["Content-Length"] == str(len(relayed))
        assert await resp.read() == relayed
    assert content_calls(upstream) == calls
    keeper = OutputKeeper(service_of(gw), "test-owner", lease_seconds=60)
    assert await keeper.sweep() == 1  # only the error file was left to copy


async def test_a_relayed_download_works_when_no_copy_can_be_written(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, upstream = await start_remote(keep=False)
    output_id, _ = await finished_batch(gw)
    keeping_on(gw, monkeypatch)
    staging = gw.config.blobs.dir / "tmp"
    staging.rmdir()
    staging.write_bytes(b"")  # no copy can start
    with caplog.at_level(logging.WARNING, logger="gateway.files"):
        content = (await gw.client.files.content(output_id)).content
    assert "while relaying failed (NotADirectoryError)" in caplog.text
    record = await service_of(gw).store.get_file(output_id)
    assert record is not None and record.blob is None
    assert content == rewritten(upstream, record)


async def test_a_download_cut_short_keeps_no_copy(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, _ = await start_remote(keep=False)
    output_id, _ = await finished_batch(gw)
    keeping_on(gw, monkeypatch)
    line = b'{"custom_id": "c", "response": {"status_code": 200, "body": {"x": "%s"}}}\n'
    line = line.replace(b"%s", b"y" * 4000)

    @asynccontextmanager
    async def endless(upstream_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                yield line * 64
                await asyncio.sleep(0)

        yield chunks()

    provider = service_of(gw).providers["anyapi"]
    monkeypatch.setattr(getattr(provider, "inner", provider), "open_file_content", endless)
    staging = gw.config.blobs.dir / "tmp"
    async with gw.http.get(gw.url(f"/v1/files/{output_id}/content")) as resp:
        assert b'"custom_id":"c"' in await resp.content.read(100_000)
        assert list(staging.iterdir())  # the copy is being written as the bytes pass
    for _ in range(250):  # the server notices the client left on its next write
        if not list(staging.iterdir()):
            break
        await asyncio.sleep(0.02)
    assert not list(staging.iterdir())
    record = await service_of(gw).store.get_file(output_id)
    assert record is not None and record.blob is None
    assert not [p for p in gw.config.blobs.dir.iterdir() if p.name.startswith(output_id)]


async def test_a_blob_store_that_cannot_write_delays_the_copy(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw, _ = await start_remote(keep=False)
    output_id, _ = await finished_batch(gw)
    keeper = OutputKeeper(service_of(gw), "test-owner", lease_seconds=60, retry_base_seconds=0.2)
    staging = gw.config.blobs.dir / "tmp"
    staging.rmdir()
    staging.write_bytes(b"")  # a file where the staging folder should be: no copy can start
    with caplog.at_level(logging.WARNING, logger="gateway.keeper"):
        assert await keeper.sweep() == 0
    assert "failed (NotADirectoryError)" in caplog.text
    staging.unlink()
    staging.mkdir()
    await asyncio.sleep(0.25)
    assert await keeper.sweep() == 2
    assert (await kept(gw, output_id)).blob is not None


async def test_a_copy_made_elsewhere_first_is_dropped(
    start_remote: Callable[..., Awaitable[tuple[Gateway, Any]]],
) -> None:
    gw, _ = await start_remote(keep=False)
    output_id, _ = await finished_batch(gw)
    svc = service_of(gw)
    record = await svc.store.get_file(output_id)
    assert record is not None
    # Another replica's copy lands while this one is being made.
    assert await svc.store.set_file_blob(output_id, "elsewhere", 1)
    keeper = OutputKeeper(svc, "test-owner", lease_seconds=60)
    assert await keeper.keep(record) is False
    blobs = sorted(p.name for p in gw.config.blobs.dir.iterdir() if p.is_file())
    assert not [name for name in blobs if name.startswith(output_id)]


async def test_files_of_local_providers_are_not_copied(start_gateway: StartGateway) -> None:
    gw = await start_gateway()  # the sandbox keeps its files on this machine already
    batch = await gw.client.batches.create(
        input_file_id=(await upload(gw)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = await wait_terminal(gw.client, batch.id)
    assert done.output_file_id
    keeper = OutputKeeper(service_of(gw), "test-owner", lease_seconds=60)
    assert await keeper.sweep() == 0
    record = await service_of(gw).store.get_file(done.output_file_id)
    assert record is not None and record.blob is None


async def test_the_keeper_stops_when_cancelled_even_as_a_batch_ends(
    start_gateway: StartGateway,
) -> None:
    svc = service_of(await start_gateway())
    for _ in range(20):  # the cancel and the wake-up land in the same turn of the loop
        keeper = OutputKeeper(svc, "test-owner", lease_seconds=60)
        task = asyncio.create_task(keeper.run())
        await asyncio.sleep(0.01)
        svc.batch_ended.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2):  # a swallowed cancel would keep it sweeping
                await task
