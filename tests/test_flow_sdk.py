"""The whole Files + Batches flow with the official openai SDK, per kind of provider."""

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
from openai.types import Batch, FileDeleted, FileObject

from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.support import chat_file, make_config

UPSTREAM_KEY = "sk-upstream-secret-123"


async def wait_terminal(client: openai.AsyncOpenAI, batch_id: str, tries: int = 200) -> Batch:
    for _ in range(tries):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish: {batch.status}")


def assert_complete(obj: Batch | FileObject) -> None:
    """Every field of the SDK's model is present on the wire (null where unset)."""
    sent = obj.model_dump(exclude_unset=True)
    assert set(type(obj).model_fields) <= set(sent), set(type(obj).model_fields) - set(sent)


async def start_remote(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Gateway, FakeOpenAIState]:
    """The gateway routing to a `type: openai` provider: a fake upstream on loopback."""
    upstream = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    monkeypatch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    config = make_config(
        tmp_path,
        providers={
            "remote": {
                "type": "openai",
                "base_url": str(upstream.make_url("/v1")),
                "api_key": "${TEST_UPSTREAM_KEY}",
            }
        },
        default="remote",
    )
    return await start_gateway(config), upstream.app[UPSTREAM]


@pytest.fixture
async def remote(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Gateway, FakeOpenAIState]:
    return await start_remote(start_gateway, aiohttp_server, tmp_path, monkeypatch)


@pytest.fixture(params=["sandbox", "openai", "sandbox-on-postgres"])
async def flow_gateway(
    request: pytest.FixtureRequest,
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Gateway, FakeOpenAIState | None]:
    if request.param.startswith("sandbox"):
        # Slow enough that a cancel right after create lands mid-run.
        sandbox = {
            "type": "sandbox",
            "dir": "./sandbox",
            "validate_seconds": 0,
            "line_seconds": 0.1,
        }
        sandbox |= {"finalize_seconds": 0, "cancel_seconds": 0}
        overrides: dict[str, Any] = {"providers": {"sandbox": sandbox}}
        if request.param == "sandbox-on-postgres":
            overrides["store"] = {"url": request.getfixturevalue("pg_url")}
        return await start_gateway(make_config(tmp_path, **overrides)), None
    return await start_remote(start_gateway, aiohttp_server, tmp_path, monkeypatch)


async def test_whole_flow(flow_gateway: tuple[Gateway, FakeOpenAIState | None]) -> None:
    gw, upstream = flow_gateway
    client = gw.client
    content = chat_file(5)

    uploaded = await client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    assert_complete(uploaded)
    assert (uploaded.bytes, uploaded.purpose, uploaded.filename) == (
        len(content),
        "batch",
        "in.jsonl",
    )
    assert uploaded.id.startswith("file-")

    batch = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "evals"},
    )
    assert_complete(batch)
    assert batch.status == "validating"
    assert batch.id.startswith("batch_")
    assert batch.input_file_id == uploaded.id
    assert batch.metadata == {"team": "evals"}
    assert batch.model == "gpt-4o-mini"

    done = await wait_terminal(client, batch.id)
    assert_complete(done)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (5, 5)
    assert done.completed_at is not None and done.completed_at >= done.created_at
    assert done.output_file_id is not None and done.output_file_id.startswith("file-")

    output = await client.files.content(done.output_file_id)
    lines = [json.loads(x) for x in output.text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"req-{i}" for i in range(5)]
    assert all(x["response"]["status_code"] == 200 for x in lines)
    assert all(x["response"]["body"]["object"] == "chat.completion" for x in lines)

    out_file = await client.files.retrieve(done.output_file_id)
    assert_complete(out_file)
    assert out_file.purpose == "batch_output"
    assert out_file.bytes == len(output.content)

    listed = [b.id async for b in client.batches.list()]
    assert listed == [batch.id]
    files = [f.id async for f in client.files.list()]
    assert set(files) == {uploaded.id, done.output_file_id}
    only_inputs = [f.id async for f in client.files.list(purpose="batch")]
    assert only_inputs == [uploaded.id]

    # A second batch on the same file, cancelled before it finishes.
    second = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = await client.batches.cancel(second.id)
    assert_complete(cancelled)
    assert cancelled.status in ("cancelling", "cancelled")
    assert cancelled.cancelling_at is not None
    final = await wait_terminal(client, second.id)
    assert final.status == "cancelled"
    assert final.cancelled_at is not None

    deleted = await client.files.delete(uploaded.id)
    assert isinstance(deleted, FileDeleted)
    assert (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)

    if upstream is not None:
        # The provider saw only the gateway's configured key, never the client's.
        assert upstream.auth_headers
        assert set(upstream.auth_headers) == {f"Bearer {UPSTREAM_KEY}"}
        # The input file was uploaded to the provider once for both batches.
        assert sum(1 for m, p in upstream.requests if (m, p) == ("POST", "/v1/files")) == 1


async def test_no_upstream_id_reaches_a_client(remote: tuple[Gateway, FakeOpenAIState]) -> None:
    gw, upstream = remote
    client = gw.client
    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(3))), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_terminal(client, batch.id)
    assert done.output_file_id is not None
    content = (await client.files.content(done.output_file_id)).content
    await client.files.retrieve(done.output_file_id)
    [b async for b in client.batches.list()]
    [f async for f in client.files.list()]

    upstream_ids = set(upstream.files) | set(upstream.batches)
    assert len(upstream_ids) >= 3  # input file, batch, output file
    seen = b"\n".join(gw.bodies) + content
    assert len(gw.bodies) >= 6
    for upstream_id in upstream_ids:
        assert upstream_id.encode() not in seen
    assert UPSTREAM_KEY.encode() not in seen
