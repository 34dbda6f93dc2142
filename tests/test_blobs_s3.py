"""Blobs in an S3-compatible bucket (a real moto server on loopback), through the gateway."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.api import SERVICE
from gateway.blobs_s3 import S3Blobs
from gateway.config import S3BlobsConfig
from gateway.result_lines import ResultLines
from tests.conftest import Gateway, StartGateway, s3_client
from tests.fakes.openai_upstream import UPSTREAM, make_openai_upstream
from tests.support import big_file, chat_line, jsonl, make_config
from tests.test_flow_sdk import wait_terminal

PART = 5 * 1024 * 1024  # the s3_blobs fixture's part size (S3's minimum)


async def bucket_state(blobs: dict[str, Any]) -> tuple[dict[str, int], list[str]]:
    """(object key -> size, keys with an unfinished multipart upload) in the test bucket."""
    config = blobs["s3"]
    async with s3_client(config) as client:
        listed = await client.list_objects_v2(Bucket=config["bucket"])
        uploads = await client.list_multipart_uploads(Bucket=config["bucket"])
    objects = {o["Key"]: o["Size"] for o in listed.get("Contents", [])}
    return objects, [u["Key"] for u in uploads.get("Uploads", [])]


async def s3_object(blobs: dict[str, Any], key: str) -> tuple[bytes, str]:
    config = blobs["s3"]
    async with s3_client(config) as client:
        got = await client.get_object(Bucket=config["bucket"], Key=f"files/{key}")
        async with got["Body"] as body:
            return await body.read(), got["ETag"]


@pytest.fixture
async def s3_gateway(
    start_gateway: StartGateway, tmp_path: Path, s3_blobs: dict[str, Any]
) -> Gateway:
    return await start_gateway(make_config(tmp_path, blobs=s3_blobs))


async def test_a_large_upload_lands_in_s3_in_parts_and_streams_back(
    s3_gateway: Gateway, s3_blobs: dict[str, Any]
) -> None:
    content = big_file(2 * PART + 1024)
    uploaded = await s3_gateway.client.files.create(
        file=("big.jsonl", io.BytesIO(content)), purpose="batch"
    )
    assert uploaded.bytes == len(content)

    stored, etag = await s3_object(s3_blobs, uploaded.id)
    assert stored == content
    assert etag.strip('"').endswith("-3")  # a multipart upload of three parts
    assert await bucket_state(s3_blobs) == ({f"files/{uploaded.id}": len(content)}, [])

    assert (await s3_gateway.client.files.content(uploaded.id)).content == content
    async with s3_gateway.http.get(s3_gateway.url(f"/v1/files/{uploaded.id}/content")) as resp:
        # Streamed from S3 with its length known up front, so clients see truncation.
        assert resp.headers.get("Content-Length") == str(len(content))
        assert await resp.read() == content


async def test_a_small_upload_is_one_object(s3_gateway: Gateway, s3_blobs: dict[str, Any]) -> None:
    content = jsonl([chat_line(i) for i in range(3)])
    uploaded = await s3_gateway.client.files.create(
        file=("small.jsonl", io.BytesIO(content)), purpose="batch"
    )
    stored, etag = await s3_object(s3_blobs, uploaded.id)
    assert stored == content and "-" not in etag
    assert (await s3_gateway.client.files.content(uploaded.id)).content == content


@pytest.mark.parametrize("case", ["invalid line after a full part", "over the size limit"])
async def test_a_rejected_upload_leaves_nothing_in_the_bucket(
    start_gateway: StartGateway, tmp_path: Path, s3_blobs: dict[str, Any], case: str
) -> None:
    # Either way the first part has gone to S3 before the upload is refused.
    if case == "over the size limit":
        content = big_file(PART + 2 * 1024 * 1024)
        gw = await start_gateway(
            make_config(tmp_path, blobs=s3_blobs, limits={"max_file_bytes": PART + 1024 * 1024})
        )
        error: type[openai.APIStatusError] = openai.APIStatusError
    else:
        content = big_file(PART + 1024 * 1024) + b"{not json\n"
        gw = await start_gateway(make_config(tmp_path, blobs=s3_blobs))
        error = openai.BadRequestError
    with pytest.raises(error) as info:
        await gw.client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch")
    assert info.value.status_code in (400, 413)
    assert await bucket_state(s3_blobs) == ({}, [])
    assert [f async for f in gw.client.files.list()] == []


async def test_delete_removes_the_object(s3_gateway: Gateway, s3_blobs: dict[str, Any]) -> None:
    uploaded = await s3_gateway.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([chat_line(0)]))), purpose="batch"
    )
    assert await s3_gateway.service.blobs.exists(uploaded.id)
    await s3_gateway.client.files.delete(uploaded.id)
    assert await bucket_state(s3_blobs) == ({}, [])
    assert not await s3_gateway.service.blobs.exists(uploaded.id)


async def test_a_batch_runs_from_an_s3_input_file(s3_gateway: Gateway) -> None:
    client = s3_gateway.client
    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(4)]))), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_terminal(client, batch.id)
    assert done.status == "completed" and done.output_file_id is not None
    output = (await client.files.content(done.output_file_id)).text
    assert sorted(json.loads(x)["custom_id"] for x in output.splitlines()) == [
        f"req-{i}" for i in range(4)
    ]


async def test_an_openai_provider_reads_the_input_from_s3_and_its_output_is_kept_there(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    s3_blobs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream = await aiohttp_server(make_openai_upstream("sk-up"))
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-up")
    remote = {"type": "openai", "base_url": str(upstream.make_url("/v1"))}
    config = make_config(
        tmp_path,
        blobs=s3_blobs,
        providers={"remote": {**remote, "api_key": "${TEST_UPSTREAM_KEY}"}},
        default="remote",
    )
    gw = await start_gateway(config)
    content = jsonl([chat_line(i) for i in range(3)])
    uploaded = await gw.client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    batch = await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 3

    assert done.output_file_id is not None
    state = upstream.app[UPSTREAM]
    for _ in range(250):  # the keeper copies the output file once the batch has ended
        objects, unfinished = await bucket_state(s3_blobs)
        kept = [k for k in objects if k.startswith(f"files/{done.output_file_id}.")]
        if kept:
            break
        await asyncio.sleep(0.02)
    assert len(kept) == 1 and not unfinished
    record = await gw.server.app[SERVICE].store.get_file(done.output_file_id)
    assert record is not None and record.upstream_id is not None
    # The kept copy is the provider's file in OpenAI's line shape, with gateway ids.
    lines = ResultLines(record.batch_id or "", record.id)
    expected = lines.feed(state.files[record.upstream_id]["_content"]) + lines.finish()
    assert objects[kept[0]] == len(expected) == record.bytes
    state.fail_on, state.fail_next = "GET /v1/files/", [500] * 5  # served from S3 now
    assert (await gw.client.files.content(done.output_file_id)).content == expected
    assert len(state.fail_next) == 5


async def test_a_missing_key_or_bucket_is_reported(s3_blobs: dict[str, Any]) -> None:
    config = S3BlobsConfig.model_validate(s3_blobs["s3"])
    blobs = await S3Blobs.connect(config)
    try:
        assert not await blobs.exists("file-nope")
        with pytest.raises(FileNotFoundError):
            async with blobs.open("file-nope"):
                pass
    finally:
        await blobs.close()
    with pytest.raises(RuntimeError, match="not usable"):
        await S3Blobs.connect(config.model_copy(update={"bucket": "no-such-bucket"}))
