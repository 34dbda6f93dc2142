"""The `type: gemini` adapter against a fake Gemini API, driven by the openai SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from providers.base import BatchRequest, InputFile, ProviderError
from providers.gemini import GeminiProvider
from providers.transport import HTTPSettings
from tests.conftest import Gateway, StartGateway
from tests.fakes.gemini_upstream import GEMINI, FakeGeminiState, make_gemini_upstream
from tests.support import MemoryState, chat_line, jsonl, make_config, read_lines, submit
from tests.test_flow_sdk import assert_complete, wait_terminal

KEY = "AIzaSyFakeGeminiKey0123456789abcdefghi"
MODEL = "gemini-2.5-flash"
CHAT = "/v1/chat/completions"
Started = tuple[Gateway, FakeGeminiState, TestServer]


@pytest.fixture
async def start_gemini(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> Callable[..., Awaitable[Started]]:
    async def start(*, key: str = KEY, **upstream_options: Any) -> Started:
        upstream = await aiohttp_server(make_gemini_upstream(KEY, **upstream_options))
        provider = {
            "type": "gemini",
            "base_url": str(upstream.make_url("")),
            "api_key": key,
            "retry_backoff_seconds": 0,
        }
        config = make_config(tmp_path, providers={"gem": provider}, default="gem")
        return await start_gateway(config), upstream.app[GEMINI], upstream

    return start


def uploaded_lines(upstream: FakeGeminiState) -> list[dict[str, Any]]:
    (name,) = [n for n, f in upstream.files.items() if f["source"] == "UPLOADED"]
    return [orjson.loads(raw) for raw in upstream.contents[name].splitlines()]


def assert_nothing_leaked(gw: Gateway, *extra: Any) -> None:
    seen = b"".join(gw.bodies) + json.dumps(extra).encode()
    for secret in (KEY.encode(), b"batches/", b"files/", b"generativelanguage"):
        assert secret not in seen, secret


async def test_chat_batch_comes_back_as_chat_completions(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_gemini()
    lines = [chat_line(i, model=MODEL) for i in range(3)]
    lines[0]["body"]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    lines[0]["body"] |= {"stop": "END", "max_tokens": 10, "temperature": 0.2}
    lines.append(chat_line(3, model=MODEL))
    lines[3]["body"]["messages"][0]["content"] = "please FAIL"
    batch = await submit(gw.client, lines)
    assert batch.status == "validating" and batch.model == MODEL

    sent = uploaded_lines(upstream)
    assert [line["key"] for line in sent] == ["req-0", "req-1", "req-2", "req-3"]
    assert sent[0]["request"] == {
        "contents": [{"role": "user", "parts": [{"text": "question 0"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.2, "maxOutputTokens": 10, "stopSequences": ["END"]},
    }
    (op,) = upstream.batches.values()
    assert op["metadata"]["displayName"] == batch.id  # the tag a lost create is found by
    assert op["metadata"]["model"] == f"models/{MODEL}"

    done = await wait_terminal(gw.client, batch.id)
    assert_complete(done)
    assert done.status == "completed" and done.completed_at is not None
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (4, 3, 1)

    output = await read_lines(gw.client, done.output_file_id)
    assert sorted(output) == ["req-0", "req-1", "req-2"]
    for custom_id, row in output.items():
        assert row["response"]["status_code"] == 200 and row["error"] is None
        body = row["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"][0]["message"]["content"] == f"fake reply to {custom_id}"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["prompt_tokens"] == 10 and body["usage"]["completion_tokens"] == 7
        assert body["usage"]["total_tokens"] == 17
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2
    errors = await read_lines(gw.client, done.error_file_id)
    assert list(errors) == ["req-3"]
    failed = errors["req-3"]["response"]
    assert failed["status_code"] == 400
    assert failed["body"]["error"]["type"] == "invalid_request_error"
    assert "is invalid" in failed["body"]["error"]["message"]

    # Reading again gives the same bytes; the key went with every call.
    first = (await gw.client.files.content(done.error_file_id or "")).content
    assert (await gw.client.files.content(done.error_file_id or "")).content == first
    assert {key for _, _, key in upstream.calls} == {KEY}
    listed = [b.id async for b in gw.client.batches.list()]
    assert listed == [batch.id]
    assert_nothing_leaked(gw, output, errors)


async def test_tool_calls_and_json_mode_are_translated_both_ways(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_gemini()
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    line = chat_line(0, model=MODEL)
    line["body"] |= {"tools": [tool], "tool_choice": "required"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    second = chat_line(1, model=MODEL)
    second["body"]["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": schema},
    }
    done = await wait_terminal(gw.client, (await submit(gw.client, [line, second])).id)

    sent = uploaded_lines(upstream)
    declared = sent[0]["request"]["tools"][0]["functionDeclarations"][0]
    assert declared["parametersJsonSchema"] == tool["function"]["parameters"]  # type: ignore[index]
    assert sent[0]["request"]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent[1]["request"]["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    choice = (await read_lines(gw.client, done.output_file_id))["req-0"]["response"]["body"][
        "choices"
    ][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_")


async def test_untranslatable_line_is_rejected_at_create_with_its_number(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_gemini()
    lines = [chat_line(0, model=MODEL), chat_line(1, model=MODEL)]
    lines[1]["body"]["logit_bias"] = {"50256": -100}
    with pytest.raises(openai.BadRequestError) as info:
        await submit(gw.client, lines)
    assert "Line 2:" in info.value.message and "logit_bias" in info.value.message
    assert upstream.batches == {} and upstream.files == {}  # refused before any upload

    with pytest.raises(openai.BadRequestError) as several:
        await submit(gw.client, [chat_line(0, model=MODEL), chat_line(1, model="gemini-2.5-pro")])
    assert "one model" in several.value.message
    assert "gemini-2.5-pro" in several.value.message and upstream.batches == {}


async def test_cancel_reports_cancelled_with_what_ran(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_gemini(polls_to_end=1000)
    batch = await submit(gw.client, [chat_line(i, model=MODEL) for i in range(3)])
    cancelling = await gw.client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert any(path.endswith(":cancel") for method, path, _ in upstream.calls)

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None and done.request_counts.completed == 1
    assert list(await read_lines(gw.client, done.output_file_id)) == ["req-0"]
    assert done.error_file_id is None  # nothing failed


async def test_embeddings_run_as_batch_embed_content(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_gemini()
    lines = [
        {
            "custom_id": f"e-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "gemini-embedding-001", "input": f"text {i}", "dimensions": 3},
        }
        for i in range(2)
    ]
    done = await wait_terminal(gw.client, (await submit(gw.client, lines, "/v1/embeddings")).id)
    assert done.status == "completed"
    assert any(":asyncBatchEmbedContent" in path for _, path, _ in upstream.calls)
    assert uploaded_lines(upstream)[0] == {
        "key": "e-0",
        "request": {"content": {"parts": [{"text": "text 0"}]}, "outputDimensionality": 3},
    }
    output = await read_lines(gw.client, done.output_file_id)
    body = output["e-1"]["response"]["body"]
    assert body["object"] == "list" and body["model"] == "gemini-embedding-001"
    assert body["data"][0]["embedding"] == [0.5, -0.25, 0.125]


async def test_upstream_errors_map_to_gateway_errors(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, server = await start_gemini(key="AIzaSyWrongKey999999999999999999999")
    with pytest.raises(openai.APIStatusError) as info:
        await submit(gw.client, [chat_line(0, model=MODEL)])
    assert info.value.status_code == 502  # Google's 400 API_KEY_INVALID is our key's fault
    assert "WrongKey" not in str(info.value.body)

    gw, upstream, server = await start_gemini()
    upstream.fail_on, upstream.fail_next = "POST /v1beta/models", [429] * 3
    with pytest.raises(openai.InternalServerError) as err:
        await submit(gw.client, [chat_line(0, model=MODEL)])
    assert err.value.status_code == 503 and "Injected failure" in err.value.message
    assert str(server.make_url("")) not in err.value.message
    assert upstream.batches == {}

    # A 500 may come after the batch was made: the gateway finds it by its tag instead
    # of making a second one.
    upstream.fail_next = ["deferred_error"] * 3
    upstream.defer_seconds = 0
    batch = await submit(gw.client, [chat_line(0, model=MODEL)])
    assert batch.status == "validating"
    await gw.service.settle_pending()
    assert len(upstream.batches) == 1
    assert (await wait_terminal(gw.client, batch.id)).status == "completed"
    assert_nothing_leaked(gw)


async def test_upload_url_on_another_host_gets_no_key(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, upstream, _ = await start_gemini(foreign_upload_host="http://203.0.113.9:9")
    batch = await submit(gw.client, [chat_line(0, model=MODEL)])
    # The upload went to the configured host (the fake saw it), not to the foreign one.
    assert any("upload_id=" in path for _, path, _ in upstream.calls)
    assert (await wait_terminal(gw.client, batch.id)).status == "completed"


async def test_adapter_lookups_and_deletes(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    """What exactly-once creates and cleanup rely on, on the adapter itself."""
    upstream = await aiohttp_server(make_gemini_upstream(KEY))
    fake = upstream.app[GEMINI]
    state = MemoryState()
    provider = GeminiProvider(
        "gem",
        frozenset({CHAT}),
        HTTPSettings(str(upstream.make_url(""))),
        api_key=KEY,
        api_version="v1beta",
        state=state,
    )
    gateway_file = "file-" + "a" * 24
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_line(i, model=MODEL) for i in range(2)]))
    size = source.stat().st_size
    file_id = await provider.upload_file(
        InputFile(source, f"{gateway_file}.jsonl", size, 2, CHAT, (MODEL,))
    )
    since = int(time.time())
    assert await provider.tagged_files(since) == [(gateway_file, file_id)]
    info = await provider.get_file(file_id)
    assert info.filename == f"{gateway_file}.jsonl"
    assert info.bytes == len(fake.contents[file_id])

    tag = "batch_" + "b" * 24
    request = BatchRequest(input_file_id=file_id, endpoint=CHAT, gateway_batch_id=tag)
    created = await provider.create_batch(request)
    found = await provider.find_batch(tag, since)
    assert found is not None and found.id == created.id
    assert await provider.find_batch("batch_" + "c" * 24, since) is None
    assert [t for t, _ in await provider.tagged_batches(since)] == [tag]

    done = await provider.get_batch(created.id)
    assert done.status == "completed" and done.error_file_id is None
    assert done.output_file_id is not None
    async with provider.open_file_content(done.output_file_id) as chunks:
        lines = b"".join([c async for c in chunks]).splitlines()
    assert len(lines) == 2
    with pytest.raises(ProviderError) as gone:
        async with provider.open_file_content(file_id):
            pass
    assert gone.value.kind == "not_found"  # uploads cannot be downloaded

    results = done.output_file_id.partition("#")[0]
    # No line failed, so the gateway was shown only the output view: deleting it is the
    # last the gateway will ask, and the results file goes with it.
    assert done.error_file_id is None
    await provider.delete_file(done.output_file_id)
    assert results not in fake.files
    await provider.delete_file(file_id)
    assert file_id not in fake.files
    await provider.close()


async def test_a_failed_batch_reports_its_error_scrubbed(
    start_gemini: Callable[..., Awaitable[Started]],
) -> None:
    gw, _, _ = await start_gemini(fail_batches=True)
    done = await wait_terminal(gw.client, (await submit(gw.client, [chat_line(0, model=MODEL)])).id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.data is not None
    (error,) = done.errors.data
    assert error.message is not None and "is malformed" in error.message
    assert_nothing_leaked(gw)
