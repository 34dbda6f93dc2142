"""The `type: openai` adapter against a fake upstream: quirks, failures, no leaks.

Each test through `start_remote` runs once per `transport:` (the kept-alive pool and
aiohttp's client): the whole flow, and failures judged the same way on both.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from providers.base import ProviderError
from providers.openai_compat import OpenAICompatProvider, parse_batch
from providers.transport import AiohttpTransport
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import ANYAPI_ENDPOINTS, UPSTREAM, make_openai_upstream
from tests.support import adapter_for, chat_file, jsonl, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_pool import TRANSPORTS

KEY = "sk-anyapi-secret-456"
Started = tuple[Gateway, Any, TestServer]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def start_remote(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    transport: str,
) -> Callable[..., Awaitable[Started]]:
    """`provider`: more options for the provider's config; the rest are the fake's."""

    async def start(
        *, gateway_key: str = KEY, provider: dict[str, Any] | None = None, **upstream_options: Any
    ) -> Started:
        upstream = await aiohttp_server(make_openai_upstream(KEY, **upstream_options))
        options = {
            "type": "openai",
            "base_url": str(upstream.make_url("/v1")),
            "api_key": gateway_key,
            "endpoints": sorted(ANYAPI_ENDPOINTS),
            "retry_backoff_seconds": 0,
            "transport": transport,
            **(provider or {}),
        }
        config = make_config(tmp_path, providers={"anyapi": options}, default="anyapi")
        gw = await start_gateway(config)
        return gw, upstream.app[UPSTREAM], upstream

    return start


async def upload(gw: Gateway, content: bytes | None = None) -> str:
    f = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(content or chat_file(3))), purpose="batch"
    )
    return f.id


async def create(gw: Gateway, file_id: str) -> Any:
    return await gw.client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def test_parse_batch_turns_placeholders_into_nulls() -> None:
    documented_example = {
        "id": "batch_x1",
        "object": "batch",
        "endpoint": "<string>",
        "input_file_id": "<string>",
        "completion_window": "<string>",
        "status": "validating",
        "output_file_id": "<string>",
        "error_file_id": "<string>",
        "created_at": 123,
        **dict.fromkeys(
            ("in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at"), 123
        ),
        **dict.fromkeys(("expired_at", "cancelling_at", "cancelled_at"), 123),
        "request_counts": {"total": 123, "completed": 123, "failed": 123},
        "metadata": {},
    }
    batch = parse_batch(documented_example)
    assert batch.status == "validating"
    assert batch.output_file_id is None and batch.error_file_id is None
    assert all(v is None for v in batch.timestamps.values())
    assert batch.errors is None and batch.model is None and batch.usage is None

    real = {**documented_example, "status": "in_progress", "in_progress_at": 1_750_000_000}
    real["completed_at"] = 1_750_000_500  # impossible while in_progress: dropped
    parsed = parse_batch(real)
    assert parsed.timestamps["in_progress_at"] == 1_750_000_000
    assert "completed_at" not in parsed.timestamps


async def test_anyapi_style_placeholders_and_partial_cancel(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_remote(placeholders=True, cancel_style="partial")
    file_id = await upload(gw)
    batch = await create(gw, file_id)
    assert batch.in_progress_at is None and batch.completed_at is None
    # The provider's clock: its second may have ticked after the gateway's created_at.
    assert batch.expires_at is not None and batch.expires_at - batch.created_at in (86_400, 86_401)
    assert batch.errors is None and batch.usage is None
    assert batch.output_file_id is None
    assert batch.model == "gpt-4o-mini"  # known from the input file

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert done.cancelled_at is None and done.failed_at is None
    assert done.completed_at is not None and done.completed_at > 1_000_000_000
    assert done.output_file_id and done.output_file_id.startswith("file-")

    second = await create(gw, file_id)
    cancelled = await gw.client.batches.cancel(second.id)
    # The partial cancel answer was followed by a full re-read of the batch.
    assert cancelled.status == "cancelled"
    assert cancelled.input_file_id == file_id
    assert cancelled.request_counts is not None
    assert ("GET", f"/v1/batches/{next(reversed(state.batches))}") in state.requests


async def test_output_and_error_files_are_downloadable(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    gw, _, _ = await start_remote()
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "fail-model" if i == 1 else "gpt-4o-mini", "messages": []},
        }
        for i in range(3)
    ]
    done = await wait_terminal(gw.client, (await create(gw, await upload(gw, jsonl(lines)))).id)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.error_file_id is not None
    errors = (await gw.client.files.content(done.error_file_id)).text
    assert '"custom_id":"c1"' in errors.replace(" ", "")


async def test_upstream_rejecting_create_leaves_no_batch(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_remote()
    file_id = await upload(gw)
    state.endpoints = frozenset()  # the provider refuses every endpoint with a 400
    with pytest.raises(openai.BadRequestError) as info:
        await create(gw, file_id)
    assert "file-UP" not in info.value.message
    assert [b async for b in gw.client.batches.list()] == []

    state.endpoints = ANYAPI_ENDPOINTS
    state.fail_on = "POST /v1/batches"
    state.fail_next = [429, 429, 429]  # definite refusals, more than the two retries
    with pytest.raises(openai.InternalServerError) as err:
        await create(gw, file_id)
    assert err.value.status_code == 503
    assert [b async for b in gw.client.batches.list()] == []

    state.fail_next = [429, 503]  # within the retries: the client never notices
    batch = await create(gw, file_id)
    assert [b.id async for b in gw.client.batches.list()] == [batch.id]
    assert len(state.batches) == 1


async def test_create_whose_every_attempt_may_have_been_made_is_settled_by_the_gateway(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    """5xx answers may come after the work was done: the client gets its batch, never an
    error it would retry into a second one, and the gateway makes exactly one upstream."""
    gw, state, _ = await start_remote()
    file_id = await upload(gw)
    state.fail_on = "POST /v1/batches"
    state.fail_next = [503, 503, 503]  # every attempt; each is looked up by tag first
    batch = await create(gw, file_id)
    assert batch.status == "validating"
    assert state.batches == {}
    creates = [r for r in state.requests if r == ("POST", "/v1/batches")]
    lookups = [r for r in state.requests if r == ("GET", "/v1/batches")]
    assert len(creates) == 3 and len(lookups) >= 3
    await gw.service.settle_pending()  # made again under the same id (or the poller did)
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and not record.pending
    (upstream,) = state.batches.values()
    assert upstream["metadata"] == {"gateway_batch_id": batch.id}
    assert (await gw.client.batches.retrieve(batch.id)).status != "failed"
    assert await gw.service.settle_pending() == 0
    assert len(state.batches) == 1


async def test_retrieve_while_the_provider_is_down_serves_stored_state(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, upstream = await start_remote()
    batch = await create(gw, await upload(gw))
    state.fail_next = [500, 500, 500]
    async with gw.http.get(gw.url(f"/v1/batches/{batch.id}")) as resp:
        assert resp.status == 200
        assert resp.headers["X-Gateway-Stale"] == "true"
        assert (await resp.json())["status"] == "validating"
    await upstream.close()  # connection refused from now on
    again = await gw.client.batches.retrieve(batch.id)
    assert again.id == batch.id


async def test_upstream_key_rejected_is_502_without_the_key(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, upstream = await start_remote(gateway_key="sk-wrong-key-789")
    file_id = await upload(gw)
    with pytest.raises(openai.APIStatusError) as info:
        await create(gw, file_id)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_auth_failed"  # type: ignore[index]
    text = str(info.value.body)
    assert "sk-wrong-key-789" not in text and str(upstream.make_url("/")) not in text
    assert state.auth_headers == ["Bearer sk-wrong-key-789"]


async def test_retrieve_cache_serves_recent_state_without_upstream_calls(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> None:
    upstream = await aiohttp_server(make_openai_upstream(KEY))
    provider = {"type": "openai", "base_url": str(upstream.make_url("/v1")), "api_key": KEY}
    config = make_config(
        tmp_path,
        providers={"anyapi": provider},
        default="anyapi",
        retrieve_cache_seconds=60,
        poller={"enabled": False},
    )
    gw = await start_gateway(config)
    batch = await create(gw, await upload(gw))
    state = upstream.app[UPSTREAM]
    polls = lambda: sum(1 for m, p in state.requests if m == "GET" and "/batches/" in p)  # noqa: E731
    first = await gw.client.batches.retrieve(batch.id)
    assert polls() == 1 and first.status == "in_progress"
    for _ in range(5):
        assert (await gw.client.batches.retrieve(batch.id)).status == "in_progress"
    assert polls() == 1  # within the TTL: answered from the store


async def test_transport_setting_picks_what_carries_the_small_calls(
    start_remote: Callable[..., Awaitable[Started]], transport: str
) -> None:
    gw, _, _ = await start_remote()
    adapter = adapter_for("anyapi", gw.config, gw.config.base_dir / "adapter")
    assert isinstance(adapter, OpenAICompatProvider)
    try:
        assert isinstance(adapter._transport, AiohttpTransport) == (transport == "aiohttp")
        assert "data" in await adapter.request_json("GET", "/batches")
    finally:
        await adapter.close()


async def test_a_create_whose_answer_was_lost_is_looked_up_not_made_again(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    """The provider made the batch, then the connection dropped: that may have been done,
    so the gateway looks it up by tag and adopts it; nothing is sent twice."""
    gw, state, _ = await start_remote()
    file_id = await upload(gw)
    state.fail_on, state.fail_next = "POST /v1/batches", ["reset_after"]
    batch = await create(gw, file_id)
    assert state.fault_log == [("reset_after", "POST /v1/batches")]
    assert state.requests.count(("POST", "/v1/batches")) == 1
    assert ("GET", "/v1/batches") in state.requests  # the lookup
    (upstream,) = state.batches.values()
    assert upstream["metadata"] == {"gateway_batch_id": batch.id}
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and not record.pending and record.upstream_id == upstream["id"]
    assert (await wait_terminal(gw.client, batch.id)).status == "completed"


async def test_a_create_that_timed_out_is_looked_up_not_made_again(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    """A timeout after sending is as ambiguous as a lost answer."""
    gw, state, _ = await start_remote(provider={"read_timeout_seconds": 0.3})
    file_id = await upload(gw)
    state.slow_answer_seconds = 1.0
    state.fail_on, state.fail_next = "POST /v1/batches", ["slow_after"]
    batch = await create(gw, file_id)
    assert state.requests.count(("POST", "/v1/batches")) == 1
    assert ("GET", "/v1/batches") in state.requests
    (upstream,) = state.batches.values()
    assert upstream["metadata"] == {"gateway_batch_id": batch.id}
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and record.upstream_id == upstream["id"]


async def test_a_refused_connect_is_definite(
    start_remote: Callable[..., Awaitable[Started]],
) -> None:
    """Nothing listens: the create was never sent, so the client gets an error at once
    and no batch is made, looked up or handed to the gateway to settle."""
    gw, state, upstream = await start_remote()
    file_id = await upload(gw)
    first = await create(gw, file_id)  # the file's copy is at the provider from now on
    await upstream.close()
    adapter = adapter_for("anyapi", gw.config, gw.config.base_dir / "adapter")
    try:
        with pytest.raises(ProviderError) as refused:
            await adapter.get_batch("batch_abc")
    finally:
        await adapter.close()
    error = refused.value
    assert (error.kind, error.ambiguous) == ("retryable", False)
    assert error.message == "could not connect (ConnectionRefusedError)"
    with pytest.raises(openai.InternalServerError) as failed:
        await create(gw, file_id)
    assert failed.value.status_code == 503
    assert [b.id async for b in gw.client.batches.list()] == [first.id]
    assert await gw.service.store.pending_batches() == []
