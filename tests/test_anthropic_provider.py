"""The `type: anthropic` adapter against a fake Message Batches API, driven by the openai SDK."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.blobs import LocalBlobs
from providers.anthropic import AnthropicProvider
from providers.base import BatchRequest, InputFile
from providers.context import ProviderContext
from providers.transport import HTTPSettings
from tests.conftest import Gateway, StartGateway
from tests.fakes.anthropic_upstream import (
    ANTHROPIC,
    FAIL_MODEL,
    FakeAnthropicState,
    make_anthropic_upstream,
)
from tests.support import MemoryState, chat_line, jsonl, make_config, read_lines, submit
from tests.test_flow_sdk import assert_complete, wait_terminal

KEY = "sk-ant-secret-123"
CHAT = "/v1/chat/completions"
Started = tuple[Gateway, FakeAnthropicState, TestServer]


@pytest.fixture
async def start_claude(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> Callable[..., Awaitable[Started]]:
    async def start(
        *, key: str = KEY, settings: dict[str, Any] | None = None, **upstream_options: Any
    ) -> Started:
        upstream = await aiohttp_server(make_anthropic_upstream(KEY, **upstream_options))
        provider = (settings or {}) | {
            "type": "anthropic",
            "base_url": str(upstream.make_url("")),
            "api_key": key,
            "default_max_tokens": 64,
            "dir": "./anthropic",
            "retry_backoff_seconds": 0,
        }
        config = make_config(tmp_path, providers={"claude": provider}, default="claude")
        return await start_gateway(config), upstream.app[ANTHROPIC], upstream

    return start


async def test_chat_batch_comes_back_as_chat_completions(
    start_claude: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_claude()
    lines = [chat_line(i, model="claude-test") for i in range(3)]
    lines[0]["body"]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    lines[0]["body"] |= {"stop": "END", "max_tokens": 10}
    lines.append(chat_line(3, model=FAIL_MODEL))
    batch = await submit(gw.client, lines)
    assert batch.status == "in_progress" and batch.model is None  # two models in the file

    done = await wait_terminal(gw.client, batch.id)
    assert_complete(done)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (4, 3)
    assert done.request_counts.failed == 1
    assert done.usage is not None and done.usage.input_tokens == 36  # 3 x (10 + 2 cached)
    assert done.completed_at is not None and done.finalizing_at is not None

    output = await read_lines(gw.client, done.output_file_id)
    assert sorted(output) == ["req-0", "req-1", "req-2"]
    for custom_id, row in output.items():
        body = row["response"]["body"]
        assert row["response"]["status_code"] == 200 and row["error"] is None
        assert body["object"] == "chat.completion" and body["model"] == "claude-test"
        assert body["choices"][0]["message"]["content"] == f"fake reply to {custom_id}"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["total_tokens"] == 17
    errors = await read_lines(gw.client, done.error_file_id)
    assert errors["req-3"]["response"]["status_code"] == 400
    assert errors["req-3"]["response"]["body"]["error"]["type"] == "invalid_request_error"

    sent = next(iter(upstream.batches.values()))["_requests"]
    assert sent[0]["params"]["system"] == "Be brief."
    assert sent[0]["params"]["stop_sequences"] == ["END"]
    assert sent[0]["params"]["max_tokens"] == 10 and sent[1]["params"]["max_tokens"] == 64
    assert {(key, version) for _, _, key, version in upstream.calls} == {(KEY, "2023-06-01")}
    # No Anthropic id or key reaches the client.
    seen = b"".join(gw.bodies) + json.dumps([output, errors]).encode()
    assert b"msgbatch_" not in seen and KEY.encode() not in seen


async def test_custom_ids_anthropic_refuses_are_mapped_back(
    start_claude: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_claude()
    ids = ["item 1/a", "ok-2"]
    batch = await submit(gw.client, [chat_line(i, custom_id=c) for i, c in enumerate(ids)])
    done = await wait_terminal(gw.client, batch.id)
    output = await read_lines(gw.client, done.output_file_id)
    assert sorted(output) == sorted(ids)
    sent = next(iter(upstream.batches.values()))["_requests"]
    assert [r["custom_id"] for r in sent] == ["line-0", "line-1"]


async def test_untranslatable_line_is_rejected_at_create_with_its_number(
    start_claude: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_claude()
    lines = [chat_line(0), chat_line(1)]
    lines[1]["body"]["n"] = 3
    with pytest.raises(openai.BadRequestError) as info:
        await submit(gw.client, lines)
    assert "Line 2:" in info.value.message and "n > 1" in info.value.message
    assert [b async for b in gw.client.batches.list()] == []
    assert upstream.batches == {}


async def test_the_configured_api_version_decides_what_a_line_may_set(
    start_claude: Callable[..., Awaitable[Started]],
) -> None:
    """From 2026-10-21 Anthropic refuses sampling parameters: such a line fails the create
    with its number instead of failing at Anthropic after the batch ran; the version is
    sent on every call."""
    gw, upstream, _ = await start_claude(settings={"anthropic_version": "2026-10-21"})
    lines = [chat_line(0), chat_line(1, body={"model": "claude-x", "messages": [], "top_p": 1})]
    lines[1]["body"]["messages"] = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as info:
        await submit(gw.client, lines)
    assert "Line 2:" in info.value.message and "top_p" in info.value.message
    assert upstream.batches == {}
    lines[1]["body"]["top_p"] = None  # null means unset
    lines[1]["body"]["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    batch = await submit(gw.client, lines)
    (sent,) = upstream.batches.values()
    params = sent["_requests"][1]["params"]
    assert "top_p" not in params
    assert params["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}}
    }
    assert batch.status in ("validating", "in_progress")
    assert {call[3] for call in upstream.calls} == {"2026-10-21"}


async def test_cancel_keeps_what_ran_and_reports_the_rest_cancelled(
    start_claude: Callable[..., Awaitable[Started]],
) -> None:
    gw, _, _ = await start_claude(polls_to_end=1000)
    batch = await submit(gw.client, [chat_line(i) for i in range(3)])
    cancelling = await gw.client.batches.cancel(batch.id)
    # The gateway re-reads after a cancel; the fake ends a canceling batch on that read.
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    assert list(await read_lines(gw.client, done.output_file_id)) == ["req-0"]
    errors = await read_lines(gw.client, done.error_file_id)
    assert {row["error"]["code"] for row in errors.values()} == {"batch_cancelled"}


async def test_expired_batch_keeps_partial_results(
    start_claude: Callable[..., Awaitable[Started]],
) -> None:
    gw, _, _ = await start_claude(expire=True)
    done = await wait_terminal(
        gw.client, (await submit(gw.client, [chat_line(i) for i in range(3)])).id
    )
    assert done.status == "expired" and done.expired_at is not None
    assert list(await read_lines(gw.client, done.output_file_id)) == ["req-0"]
    errors = await read_lines(gw.client, done.error_file_id)
    assert {row["error"]["code"] for row in errors.values()} == {"batch_expired"}


async def test_upstream_errors_map_to_gateway_errors(
    start_claude: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, server = await start_claude(key="sk-ant-wrong-999")
    with pytest.raises(openai.APIStatusError) as info:
        await submit(gw.client, [chat_line(0)])
    assert info.value.status_code == 502
    assert "sk-ant-wrong-999" not in str(info.value.body)

    gw, upstream, server = await start_claude()
    upstream.fail_next = [429] * 3  # refused each time, more than the retries
    with pytest.raises(openai.InternalServerError) as err:
        await submit(gw.client, [chat_line(0)])
    assert err.value.status_code == 503 and "Injected failure" in err.value.message
    assert str(server.make_url("")) not in err.value.message
    assert upstream.batches == {}

    # Overloaded (529) may come after the work was done: never an error the client would
    # retry into a second batch. It gets its batch, which the gateway makes exactly once.
    upstream.fail_on, upstream.fail_next = "POST /v1/messages/batches", [529] * 3
    batch = await submit(gw.client, [chat_line(0)])
    assert batch.status == "validating" and upstream.batches == {}
    await gw.service.settle_pending()
    assert len(upstream.batches) == 1
    assert (await wait_terminal(gw.client, batch.id)).status == "completed"


async def test_retrieve_reports_finalizing_while_results_are_fetched(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    upstream = await aiohttp_server(make_anthropic_upstream(KEY))
    http = HTTPSettings(str(upstream.make_url("")))
    provider = AnthropicProvider(
        ProviderContext("claude", frozenset({CHAT}), MemoryState(), LocalBlobs(tmp_path), http),
        api_key=KEY,
        anthropic_version="2023-06-01",
        default_max_tokens=16,
        finalize_wait_seconds=0,
    )
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_line(i) for i in range(2)]))
    file_id = await provider.upload_file(
        InputFile(source, "in.jsonl", source.stat().st_size, 2, CHAT, ("gpt-4o-mini",))
    )
    created = await provider.create_batch(BatchRequest(input_file_id=file_id, endpoint=CHAT))
    upstream.app[ANTHROPIC].latency = 0.2  # the results download takes a while
    first = await provider.get_batch(created.id)
    assert first.status == "finalizing" and first.timestamps["finalizing_at"] is not None
    assert first.output_file_id is None
    while (batch := await provider.get_batch(created.id)).status == "finalizing":
        pass
    assert batch.status == "completed" and batch.output_file_id is not None
    info = await provider.get_file(batch.output_file_id)
    async with provider.open_file_content(batch.output_file_id) as chunks:
        assert len(b"".join([c async for c in chunks])) == info.bytes
    await provider.close()
