"""The `type: emulated` provider: the gateway runs batches itself against a synchronous
OpenAI-compatible server (a fake on loopback), driven by the openai SDK."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from openai.types import Batch

from gateway.config import Config
from providers.base import BatchRequest, InputFile
from providers.emulated import EmulatedProvider
from tests.conftest import Gateway, StartGateway
from tests.fakes.sync_upstream import FAIL_MODEL, SYNC, FakeSyncState, make_sync_upstream
from tests.support import (
    MemoryState,
    adapter_for,
    chat_line,
    jsonl,
    make_config,
    read_lines,
    submit,
)
from tests.test_flow_sdk import assert_complete, wait_terminal

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
MakeUpstream = Callable[..., Awaitable[tuple[TestServer, FakeSyncState]]]


@pytest.fixture
def make_upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> MakeUpstream:
    async def make(**options: Any) -> tuple[TestServer, FakeSyncState]:
        server = await aiohttp_server(make_sync_upstream(**options))
        return server, server.app[SYNC]

    return make


def emulated_config(tmp_path: Path, upstream: TestServer, **options: Any) -> Config:
    provider = {
        "type": "emulated",
        "base_url": str(upstream.make_url("/v1")),
        "dir": "./emulated",
        "concurrency": 3,
        "retry_backoff_seconds": 0.01,
    }
    return make_config(tmp_path, providers={"local": provider | options}, default="local")


def embedding_line(i: int) -> dict[str, Any]:
    body = {"model": "embed-small", "input": f"text number {i}"}
    return {"custom_id": f"emb-{i}", "method": "POST", "url": EMBEDDINGS, "body": body}


async def wait_completed(gw: Gateway, batch_id: str, at_least: int) -> Batch:
    """Poll until `request_counts.completed` reaches `at_least` (counts advance live)."""
    for _ in range(200):
        batch = await gw.client.batches.retrieve(batch_id)
        assert batch.request_counts is not None
        if batch.request_counts.completed >= at_least:
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} stuck at {batch.request_counts}")


async def test_chat_batch_respects_concurrency_and_retries_failures(
    start_gateway: StartGateway, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, state = await make_upstream(latency=0.05, fail_next=[429, 500, 503])
    gw = await start_gateway(emulated_config(tmp_path, upstream))
    lines = [chat_line(i, model=FAIL_MODEL if i == 5 else "llama-3") for i in range(12)]
    batch = await submit(gw.client, lines)
    assert batch.status == "validating" and batch.model is None  # two models in the file

    done = await wait_terminal(gw.client, batch.id)
    assert_complete(done)
    assert done.status == "completed" and done.completed_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (12, 11)
    assert done.request_counts.failed == 1
    assert done.usage is not None and done.usage.output_tokens == 11 * 5

    output = await read_lines(gw.client, done.output_file_id)
    assert sorted(output) == sorted(f"req-{i}" for i in range(12) if i != 5)
    row = output["req-3"]
    assert row["response"]["status_code"] == 200 and row["error"] is None
    assert row["response"]["request_id"].startswith("req_")
    assert row["response"]["body"]["object"] == "chat.completion"
    assert (
        row["response"]["body"]["choices"][0]["message"]["content"]
        == "Sandbox reply to: question 3"
    )
    error = (await read_lines(gw.client, done.error_file_id))["req-5"]["response"]
    assert (error["status_code"], error["body"]["error"]["code"]) == (400, "model_not_found")

    assert state.peak == 3  # the configured concurrency, reached and never exceeded
    assert len(state.served) == 12 + 3  # three injected failures, each retried once
    assert set(state.served) == {f"question {i}" for i in range(12)}


async def test_embeddings_batch_completes(
    start_gateway: StartGateway, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, state = await make_upstream(api_key="sk-local-1")
    gw = await start_gateway(emulated_config(tmp_path, upstream, api_key="sk-local-1"))
    batch = await submit(gw.client, [embedding_line(i) for i in range(5)], EMBEDDINGS)
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed" and done.model == "embed-small"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 0)
    assert done.error_file_id is None
    output = await read_lines(gw.client, done.output_file_id)
    assert sorted(output) == [f"emb-{i}" for i in range(5)]
    body = output["emb-2"]["response"]["body"]
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    assert done.usage is not None and done.usage.input_tokens == 15
    assert sorted(state.served) == sorted(f"text number {i}" for i in range(5))


async def test_restart_resumes_without_sending_a_line_twice(
    start_gateway: StartGateway, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, state = await make_upstream(latency=0.08)
    config = emulated_config(tmp_path, upstream, concurrency=2)
    first = await start_gateway(config)
    batch = await submit(first.client, [chat_line(i) for i in range(10)])
    running = await wait_completed(first, batch.id, at_least=3)
    assert running.status == "in_progress"
    await first.server.close()  # cleanup_ctx: provider.close() lets in-flight lines finish
    sent_before_restart = len(state.served)
    assert sent_before_restart < 10
    assert not (tmp_path / "emulated").exists()  # state and results live in store and blobs

    second = await start_gateway(config)
    done = await wait_terminal(second.client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 10
    assert sorted(await read_lines(second.client, done.output_file_id)) == sorted(
        f"req-{i}" for i in range(10)
    )
    sent = Counter(state.served)
    assert set(sent) == {f"question {i}" for i in range(10)}
    assert max(sent.values()) == 1, f"sent twice: {[t for t, n in sent.items() if n > 1]}"
    assert not (tmp_path / "emulated").exists()


async def test_cancel_stops_dispatching_and_keeps_finished_results(
    start_gateway: StartGateway, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, state = await make_upstream(latency=0.05)
    gw = await start_gateway(emulated_config(tmp_path, upstream, concurrency=1))
    batch = await submit(gw.client, [chat_line(i) for i in range(8)])
    await wait_completed(gw, batch.id, at_least=2)
    cancelling = await gw.client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    output = await read_lines(gw.client, done.output_file_id)
    errors = await read_lines(gw.client, done.error_file_id)
    assert 2 <= len(output) < 8 and len(output) + len(errors) == 8
    assert {row["error"]["code"] for row in errors.values()} == {"batch_cancelled"}
    assert all(row["response"] is None for row in errors.values())
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (len(output), len(errors))
    # Nothing was sent after the cancel except the request already in flight, which finished.
    assert sorted(state.served) == sorted(f"question {c.removeprefix('req-')}" for c in output)


async def test_completion_window_expires_with_partial_results(
    start_gateway: StartGateway, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, _ = await make_upstream(latency=0.1)
    config = emulated_config(tmp_path, upstream, concurrency=1, completion_window_seconds=0.35)
    gw = await start_gateway(config)
    batch = await submit(gw.client, [chat_line(i) for i in range(10)])
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "expired" and done.expired_at is not None
    assert done.expires_at is not None and done.expires_at <= done.created_at + 1
    output = await read_lines(gw.client, done.output_file_id)
    errors = await read_lines(gw.client, done.error_file_id)
    assert 1 <= len(output) < 10 and len(output) + len(errors) == 10
    assert {row["error"]["code"] for row in errors.values()} == {"batch_expired"}


async def test_requests_per_minute_spreads_requests(
    start_gateway: StartGateway, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, state = await make_upstream()
    config = emulated_config(tmp_path, upstream, concurrency=30, requests_per_minute=1200)
    gw = await start_gateway(config)
    done = await wait_terminal(
        gw.client, (await submit(gw.client, [chat_line(i) for i in range(30)])).id
    )
    assert done.status == "completed"
    # 20 per second: one second's worth at once, then the other 10 at 20/s (0.5 s).
    assert state.times[-1] - state.times[0] >= 0.4
    assert state.times[19] - state.times[0] < 0.3


async def test_lines_that_keep_failing_land_in_the_error_file(
    start_gateway: StartGateway, make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, state = await make_upstream(fail_next=[500, 502])
    config = emulated_config(tmp_path, upstream, concurrency=1, max_retries=1)
    gw = await start_gateway(config)
    done = await wait_terminal(
        gw.client, (await submit(gw.client, [chat_line(0), chat_line(1)])).id
    )
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    failed = (await read_lines(gw.client, done.error_file_id))["req-0"]["response"]
    assert failed["status_code"] == 502 and failed["body"]["error"]["type"] == "server_error"
    assert state.served == ["question 0", "question 0", "question 1"]

    address = str(upstream.make_url("/"))
    await upstream.close()  # nothing listens any more: no HTTP answer at all
    done = await wait_terminal(gw.client, (await submit(gw.client, [chat_line(2)])).id)
    line = (await read_lines(gw.client, done.error_file_id))["req-2"]
    assert line["response"] is None and line["error"]["code"] == "upstream_unavailable"
    assert address not in line["error"]["message"]


async def test_hard_stop_resends_only_unfinished_lines(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    upstream, state = await make_upstream(latency=0.05)
    config = emulated_config(tmp_path, upstream, concurrency=2)
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_line(i) for i in range(8)]))
    upload = InputFile(source, "in.jsonl", source.stat().st_size, 8, CHAT, ("gpt-4o-mini",))
    store = MemoryState()  # the gateway's store and blobs outlive the adapter

    first: EmulatedProvider = adapter_for("local", config, tmp_path / "blobs", store)
    created = await first.create_batch(
        BatchRequest(input_file_id=await first.upload_file(upload), endpoint=CHAT)
    )
    while (counts := (await first.get_batch(created.id)).request_counts) is None or (
        counts.completed < 3
    ):
        await asyncio.sleep(0.01)
    first.shutdown_grace_seconds = 0  # in-flight requests are abandoned
    await first.close()
    assert not list((tmp_path / "emulated").parent.glob("emulated*"))  # nothing on disk

    second: EmulatedProvider = adapter_for("local", config, tmp_path / "blobs", store)
    while not (batch := await second.get_batch(created.id)).terminal:  # resumed on its own
        await asyncio.sleep(0.02)
    assert batch.status == "completed" and batch.output_file_id is not None
    async with second.open_file_content(batch.output_file_id) as chunks:
        rows = [json.loads(x) for x in b"".join([c async for c in chunks]).splitlines()]
    assert sorted(r["custom_id"] for r in rows) == sorted(f"req-{i}" for i in range(8))
    # What finished was flushed at close: only the (at most two) abandoned in-flight
    # requests could be sent again.
    assert len(state.served) - 8 <= 2
    assert store.states[created.id][1] is False  # no longer active
    await second.close()
