"""Files: output files are read-only, inputs in use can't be deleted, expired files go away."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import openai
import pytest

from gateway import ids
from gateway.blobs import WINDOW
from gateway.store import FileRecord
from tests.conftest import Gateway, StartGateway
from tests.support import big_file, chat_file, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_key_limits import SLOW_SANDBOX


@pytest.fixture
async def quiet(start_gateway: StartGateway, tmp_path: Path) -> Gateway:
    """No poller, so only the test sweeps."""
    return await start_gateway(make_config(tmp_path, poller={"enabled": False}))


async def completed_batch(gw: Gateway, **kwargs: object) -> tuple[str, str, str]:
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
    batch = await gw.client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **kwargs,  # type: ignore[arg-type]
    )
    done = await wait_terminal(gw.client, batch.id)
    assert done.output_file_id
    return f.id, batch.id, done.output_file_id


async def test_a_file_of_several_mmap_windows_downloads_whole_with_its_length(
    gateway: Gateway,
) -> None:
    content = big_file(3 * WINDOW + 12345)  # windows are sent as they are mapped
    uploaded = await gateway.client.files.create(
        file=("big.jsonl", io.BytesIO(content)), purpose="batch"
    )
    async with gateway.http.get(gateway.url(f"/v1/files/{uploaded.id}/content")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(content))
        assert await resp.read() == content
    assert (await gateway.client.files.content(uploaded.id)).content == content


async def test_head_of_content_sends_the_headers_only(gateway: Gateway) -> None:
    content = chat_file(5)
    uploaded = await gateway.client.files.create(
        file=("in.jsonl", io.BytesIO(content)), purpose="batch"
    )
    url = gateway.url(f"/v1/files/{uploaded.id}/content")
    for _ in range(2):  # the same keep-alive connection carries on cleanly
        async with gateway.http.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(content))
            assert await resp.read() == b""
        async with gateway.http.get(url) as resp:
            assert await resp.read() == content


async def test_output_files_are_read_only(gateway: Gateway) -> None:
    _, _, output = await completed_batch(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        await gateway.client.files.delete(output)
    assert info.value.code == "file_read_only"
    assert (await gateway.client.files.retrieve(output)).purpose == "batch_output"
    assert (await gateway.client.files.content(output)).content


async def test_an_input_file_in_use_cannot_be_deleted(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(make_config(tmp_path, providers={"sandbox": SLOW_SANDBOX}))
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
    batch = await gw.client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.ConflictError) as info:
        await gw.client.files.delete(f.id)
    assert info.value.code == "file_in_use"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert gw.config.blobs.dir.joinpath(f.id).exists()
    await gw.client.batches.cancel(batch.id)
    await wait_terminal(gw.client, batch.id)
    deleted = await gw.client.files.delete(f.id)
    assert deleted.deleted and not gw.config.blobs.dir.joinpath(f.id).exists()


async def plant_expired(gw: Gateway, *, blob: bool) -> FileRecord:
    """A file row (and blob) whose expiry is already past."""
    file_id = ids.new_file_id()
    if blob:
        writer = gw.service.blobs.writer(file_id)
        await writer.write(chat_file(1))
        await writer.commit()
    now = int(time.time())
    record = FileRecord(
        id=file_id,
        tenant="default",
        purpose="batch" if blob else "batch_output",
        filename="old.jsonl",
        bytes=10,
        created_at=now - 7200,
        expires_at=now - 1,
        blob=file_id if blob else None,
        provider=None if blob else "sandbox",
        upstream_id=None if blob else f"file-up-{file_id}",
    )
    await gw.service.store.insert_file(record)
    return record


async def test_expired_files_are_gone_then_swept(quiet: Gateway) -> None:
    gateway = quiet
    old_input = await plant_expired(gateway, blob=True)
    old_output = await plant_expired(gateway, blob=False)
    fresh = await gateway.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    for record in (old_input, old_output):
        with pytest.raises(openai.NotFoundError):
            await gateway.client.files.retrieve(record.id)
    assert [f.id async for f in gateway.client.files.list()] == [fresh.id]

    assert await gateway.service.sweep_expired() == 2
    store = gateway.service.store
    assert (
        await store.get_file(old_input.id) is None and await store.get_file(old_output.id) is None
    )
    assert not gateway.config.blobs.dir.joinpath(old_input.id).exists()
    assert gateway.config.blobs.dir.joinpath(fresh.id).exists()
    assert await gateway.service.sweep_expired() == 0


async def test_expiry_follows_expires_after_and_output_expires_after(quiet: Gateway) -> None:
    gateway = quiet
    f_id, _, output = await completed_batch(
        gateway, output_expires_after={"anchor": "created_at", "seconds": 3600}
    )
    out = await gateway.client.files.retrieve(output)
    assert out.expires_at == out.created_at + 3600
    store = gateway.service.store
    # An hour and a bit later: the output file is swept, the 30-day input file stays.
    assert await gateway.service.sweep_expired(now=time.time() + 3700) == 1
    assert await store.get_file(output) is None and await store.get_file(f_id) is not None
    assert await gateway.service.sweep_expired(now=time.time() + 31 * 86_400) == 1
    assert not gateway.config.blobs.dir.joinpath(f_id).exists()


async def test_inputs_of_active_batches_outlive_their_expiry(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(make_config(tmp_path, providers={"sandbox": SLOW_SANDBOX}))
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch")
    await gw.client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert await gw.service.sweep_expired(now=time.time() + 31 * 86_400) == 0
    assert gw.config.blobs.dir.joinpath(f.id).exists()


async def test_the_poller_sweeps(start_gateway: StartGateway, tmp_path: Path) -> None:
    poller = {"interval_seconds": 60, "webhook_interval_seconds": 0.02}
    gw = await start_gateway(
        make_config(tmp_path, poller={**poller, "sweep_interval_seconds": 0.05})
    )
    record = await plant_expired(gw, blob=True)
    for _ in range(100):
        if await gw.service.store.get_file(record.id) is None:
            break
        await asyncio.sleep(0.02)
    assert await gw.service.store.get_file(record.id) is None
    assert not gw.config.blobs.dir.joinpath(record.id).exists()
