"""Retrieves of batches whose provider and upstream id this process already knows.

Such a retrieve asks the provider first and reads the row while that call is in
flight. The row still decides: its tenant, whether it still exists, and whether
another process has ended the batch meanwhile.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.auth import hash_key
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.support import chat_file, make_config

Servers = Callable[..., Awaitable[TestServer]]
UPSTREAM_KEY = "sk-routes-upstream-key"
KEYS = {"team-a": "key-for-team-a-123", "team-b": "key-for-team-b-456"}


async def gateway_on_fake(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> tuple[Gateway, FakeOpenAIState]:
    server = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    up = {"type": "openai", "base_url": str(server.make_url("/v1")), "api_key": UPSTREAM_KEY}
    auth = {"keys": [{"name": n, "key_sha256": hash_key(k)} for n, k in KEYS.items()]}
    config = make_config(
        tmp_path, providers={"up": up}, default="up", auth=auth, poller={"enabled": False}
    )
    return await start_gateway(config, api_key=KEYS["team-a"]), server.app[UPSTREAM]


async def create(gw: Gateway) -> str:
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
    batch = await gw.client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


def batch_reads(state: FakeOpenAIState) -> int:
    return sum(1 for m, p in state.requests if m == "GET" and p.startswith("/v1/batches/"))


async def test_a_batch_ended_by_another_process_shows_its_end_and_is_not_asked_again(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    gw, state = await gateway_on_fake(start_gateway, aiohttp_server, tmp_path)
    batch_id = await create(gw)
    assert (await gw.client.batches.retrieve(batch_id)).status == "in_progress"

    # Another replica sees the batch cancelled and writes it; this process still
    # knows the batch as active.
    record = await gw.service.store.get_batch(batch_id)
    assert record is not None
    record.object = {**record.object, "status": "cancelled", "cancelled_at": 1_800_000_000}
    assert await gw.service.store.update_batch(record)

    reads = batch_reads(state)
    shown = await gw.client.batches.retrieve(batch_id)
    assert (shown.status, shown.cancelled_at) == ("cancelled", 1_800_000_000)
    assert batch_reads(state) == reads + 1  # the call already in flight when the row was read
    for _ in range(3):
        assert (await gw.client.batches.retrieve(batch_id)).status == "cancelled"
    assert batch_reads(state) == reads + 1


async def test_another_tenant_asking_for_a_known_batch_reaches_no_provider(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    gw, state = await gateway_on_fake(start_gateway, aiohttp_server, tmp_path)
    batch_id = await create(gw)
    await gw.client.batches.retrieve(batch_id)  # the route is known from here on
    reads = batch_reads(state)
    other = gw.client.with_options(api_key=KEYS["team-b"])
    with pytest.raises(openai.NotFoundError) as caught:
        await other.batches.retrieve(batch_id)
    assert caught.value.body["param"] == "batch_id"  # type: ignore[index]
    assert batch_reads(state) == reads


async def test_a_known_batch_whose_row_is_gone_is_not_found(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    gw, state = await gateway_on_fake(start_gateway, aiohttp_server, tmp_path)
    batch_id = await create(gw)
    await gw.client.batches.retrieve(batch_id)
    await gw.service.store.delete_batch(batch_id)  # e.g. removed by another replica
    with pytest.raises(openai.NotFoundError) as caught:
        await gw.client.batches.retrieve(batch_id)
    assert caught.value.body["param"] == "batch_id"  # type: ignore[index]


async def test_a_known_batch_is_shown_stale_when_its_provider_fails(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    gw, state = await gateway_on_fake(start_gateway, aiohttp_server, tmp_path)
    batch_id = await create(gw)
    before = await gw.client.batches.retrieve(batch_id)
    state.fail_next = [400]  # not retried: one failed answer is enough
    raw = await gw.client.batches.with_raw_response.retrieve(batch_id)
    assert raw.headers.get("Warning", "").startswith("110")
    assert raw.parse().model_dump() == before.model_dump()
