"""Provider retention: what the gateway no longer needs does not stay at the provider."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from gateway import cli, retention
from gateway.retention import Retention
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_output_keeper import finished_batch, kept, service_of

KEY = "sk-retention-upstream-456"
Servers = Callable[..., Awaitable[TestServer]]


async def start(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path, **provider: Any
) -> tuple[Gateway, FakeOpenAIState]:
    upstream = await aiohttp_server(make_openai_upstream(KEY))
    options = {"type": "openai", "base_url": str(upstream.make_url("/v1")), "api_key": KEY}
    config = make_config(
        tmp_path,
        providers={"up": {**options, "retry_backoff_seconds": 0, "max_retries": 0, **provider}},
        default="up",
        poller={"interval_seconds": 0.05, "webhook_interval_seconds": 3600},
    )
    return await start_gateway(config), upstream.app[UPSTREAM]


def deletions(outcome: str) -> float:
    labels = {"provider": "up", "outcome": outcome}
    return REGISTRY.get_sample_value("gateway_provider_deletions_total", labels) or 0.0


async def test_an_ended_batch_leaves_no_file_at_the_provider(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw, state = await start(aiohttp_server, start_gateway, tmp_path)
    output_id, error_id = await finished_batch(gw)
    for file_id in (output_id, error_id):
        await kept(gw, file_id)
    assert len(state.files) == 3  # input, output and error files, all at the provider
    before = deletions("deleted")
    assert await Retention(service_of(gw)).run_once() == 3
    assert state.files == {}
    assert deletions("deleted") == before + 3
    # The client still has everything, from the gateway's own copies.
    assert (await gw.client.files.content(output_id)).content
    assert (await gw.client.files.content(error_id)).content
    # A later batch of the same file uploads it again.
    (upload,) = [f async for f in gw.client.files.list(purpose="batch")]
    again = await gw.client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await wait_terminal(gw.client, again.id)).status == "completed"


async def test_a_client_delete_reaches_the_provider_whatever_the_config(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    keep_all = {"delete_inputs": False, "delete_outputs": False}
    gw, state = await start(aiohttp_server, start_gateway, tmp_path, retention=keep_all)
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch"
    )
    batch = await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await wait_terminal(gw.client, batch.id)
    keeper = Retention(service_of(gw))
    await keeper.run_once()
    copies = [f["id"] for f in state.files.values() if f["purpose"] == "batch"]
    assert len(copies) == 1  # kept at the provider, as configured
    await gw.client.files.delete(uploaded.id)
    await keeper.run_once()
    assert not any(f["purpose"] == "batch" for f in state.files.values())


async def test_refused_deletes_are_retried_and_listed_as_leftovers(
    aiohttp_server: Servers,
    start_gateway: StartGateway,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(retention, "RETRY_BASE_SECONDS", 0.0)  # no waiting for the retry
    gw, state = await start(aiohttp_server, start_gateway, tmp_path)
    store = service_of(gw).store
    for file_id in await finished_batch(gw):
        await kept(gw, file_id)
    state.fail_on, state.fail_next = "DELETE /v1/files", [500] * 3
    keeper = Retention(service_of(gw))
    failed = deletions("failed")
    assert await keeper.run_once() == 0
    assert len(state.files) == 3 and deletions("failed") == failed + 3
    left = await store.leftovers()
    assert sorted(item.what for item in left) == ["input", "output", "output"]
    assert all(item.attempts == 1 and item.last_error == "retryable" for item in left)

    config = tmp_path / "leftovers.yaml"
    store_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    sandbox = {"type": "sandbox", "dir": str(tmp_path / "sandbox")}
    raw = {"store": {"url": store_url}, "providers": {"sandbox": sandbox}, "default": "sandbox"}
    config.write_text(yaml.safe_dump(raw))
    assert await asyncio.to_thread(cli.main, ["leftovers", "--config", str(config)]) == 0
    report = capsys.readouterr().out
    assert "3 copies left at providers" in report
    assert report.count("retryable") == 3 and KEY not in report

    assert await keeper.run_once() == 3  # the retry goes through
    assert state.files == {} and await store.leftovers() == []
