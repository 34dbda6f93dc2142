"""The `type: together` adapter: translations on Together's documented examples, and the
whole openai-SDK flow through the gateway against a fake Together Batch API."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from providers.base import BatchRequest, InputFile, ProviderError
from providers.lines import LineError
from providers.together import (
    TogetherProvider,
    TogetherProviderConfig,
    input_line,
    parse_job,
    result_line,
    unix_time,
    unwrapped,
)
from providers.transport import HTTPSettings
from tests.conftest import Gateway, StartGateway
from tests.fakes.together_upstream import (
    FAIL_MODEL,
    TOGETHER,
    USER_ID,
    FakeTogetherState,
    make_together_upstream,
)
from tests.support import (
    MemoryState,
    adapter_for,
    chat_line,
    enabled_providers,
    jsonl,
    make_config,
)
from tests.test_flow_sdk import wait_terminal
from tests.test_pool import TRANSPORTS

KEY = "tg-secret-key-0123456789"
CHAT = "/v1/chat/completions"
Started = tuple[Gateway, FakeTogetherState, TestServer]

# Together's API reference, `POST /batches` (201), verbatim.
DOCS_CREATE_ANSWER: dict[str, Any] = {
    "job": {
        "id": "01234567-8901-2345-6789-012345678901",
        "user_id": "user_789xyz012",
        "input_file_id": "file-input123abc456def",
        "file_size_bytes": 1048576,
        "status": "IN_PROGRESS",
        "job_deadline": "2024-01-15T15:30:00Z",
        "created_at": "2024-01-15T14:30:00Z",
        "endpoint": "/v1/chat/completions",
        "progress": 75,
        "model_id": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
        "output_file_id": "file-output789xyz012ghi",
        "error_file_id": "file-errors456def789jkl",
        "error": "<string>",
        "completed_at": "2024-01-15T15:45:30Z",
    },
    "warning": "<string>",
}


def test_docs_create_answer_translates() -> None:
    batch = parse_job(unwrapped(DOCS_CREATE_ANSWER), total=8)
    assert batch.id == "01234567-8901-2345-6789-012345678901"
    assert batch.status == "in_progress"
    assert batch.model == "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
    assert batch.output_file_id == "file-output789xyz012ghi"
    assert batch.error_file_id == "file-errors456def789jkl"
    assert batch.timestamps == {"expires_at": 1705332600}  # 2024-01-15T15:30:00Z
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (8, 6)
    assert batch.errors is None  # a running job's `error` is no batch error
    done = parse_job({**DOCS_CREATE_ANSWER["job"], "status": "COMPLETED"}, total=8, failed=3)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 3)
    stopped = parse_job({**DOCS_CREATE_ANSWER["job"], "status": "CANCELLED"}, total=8, failed=1)
    assert stopped.request_counts is not None  # 75% processed, one of them failed
    assert (stopped.request_counts.completed, stopped.request_counts.failed) == (5, 1)
    # Without a known total no counts are made up.
    assert parse_job(DOCS_CREATE_ANSWER["job"]).request_counts is None


@pytest.mark.parametrize(
    ("status", "expected", "ended_at"),
    [
        ("VALIDATING", "validating", None),
        ("COMPLETED", "completed", "completed_at"),
        ("FAILED", "failed", "failed_at"),
        ("EXPIRED", "expired", "expired_at"),
        ("CANCELLED", "cancelled", "cancelled_at"),
        ("CANCELING", "cancelling", None),
        ("SOMETHING_NEW", "in_progress", None),
    ],
)
def test_statuses_and_the_time_a_job_ended(
    status: str, expected: str, ended_at: str | None
) -> None:
    job = {**DOCS_CREATE_ANSWER["job"], "status": status, "error": "model went away"}
    batch = parse_job(job)
    assert batch.status == expected
    if ended_at:
        assert batch.timestamps[ended_at] == 1705333530  # 2024-01-15T15:45:30Z
    assert set(batch.timestamps) == {"expires_at"} | ({ended_at} if ended_at else set())
    if expected == "failed":
        assert batch.errors == [
            {"code": "batch_failed", "message": "model went away", "param": None, "line": None}
        ]


def test_unix_time_reads_isoformat_and_refuses_the_rest() -> None:
    assert unix_time("2024-01-15T14:30:00Z") == 1705329000
    assert unix_time("2024-01-15T14:30:00.5+00:00") == 1705329000
    assert unix_time("0001-01-01T00:00:00Z") is None  # Go's zero time: unset
    assert unix_time("2024-01-15T14:30:00") is None  # no zone: can't be placed
    assert unix_time("<string>") is None and unix_time(None) is None


def test_input_lines_become_together_lines() -> None:
    # Together's docs' input line, as an OpenAI line carries it.
    body = {
        "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "messages": [{"role": "user", "content": "Hello, world!"}],
        "max_tokens": 200,
    }
    line = {"custom_id": "request-1", "method": "POST", "url": CHAT, "body": body}
    assert input_line(line) == {"custom_id": "request-1", "body": body}
    with pytest.raises(LineError, match="64"):
        input_line({**line, "custom_id": "x" * 65})


def test_result_lines_become_openai_lines() -> None:
    # Together's documented output and error lines.
    body = {"id": "...", "object": "chat.completion", "choices": [], "usage": {}}
    out = result_line({"custom_id": "request-1", "response": {"status_code": 200, "body": body}}, 0)
    assert out["custom_id"] == "request-1" and out["error"] is None
    assert out["response"]["status_code"] == 200 and out["response"]["body"] == body
    assert out["id"].startswith("batch_req_") and out["response"]["request_id"].startswith("req_")

    documented_error = {
        "custom_id": "req-1",
        "error": {"message": "Invalid model specified", "code": "invalid_model"},
    }
    err = result_line(documented_error, 1)
    assert err["response"] is None
    assert err["error"] == {"code": "invalid_model", "message": "Invalid model specified"}
    assert result_line({"custom_id": "r", "error": "timeout"}, 2)["error"]["message"] == "timeout"
    assert result_line([1], 3)["error"]["code"] == "invalid_provider_line"
    assert result_line({"custom_id": "r"}, 4)["error"]["code"] == "invalid_provider_line"


async def test_config_defaults_to_the_public_api_and_needs_a_key(tmp_path: Path) -> None:
    config = TogetherProviderConfig.model_validate({"type": "together", "api_key": "k"})
    assert config.base_url == "https://api.together.xyz/v1"
    loaded = make_config(
        tmp_path,
        providers={"tg": {"type": "together", "api_key": "k"}, "nokey": {"type": "together"}},
        default="tg",
    )
    assert enabled_providers(loaded) == ["tg"]
    assert loaded.providers["nokey"].disabled_reason is not None
    adapter = adapter_for("tg", loaded, tmp_path / "blobs")
    try:
        assert isinstance(adapter, TogetherProvider) and adapter.lookup == "count"
        assert adapter.endpoints == frozenset({CHAT, "/v1/completions"})
        assert adapter.base_url == "https://api.together.xyz/v1"
    finally:
        await adapter.close()


@pytest.fixture
async def start_together(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> Callable[..., Awaitable[Started]]:
    async def start(*, key: str = KEY, transport: str = "pool", **upstream_options: Any) -> Started:
        upstream = await aiohttp_server(make_together_upstream(KEY, **upstream_options))
        provider = {
            "type": "together",
            "base_url": str(upstream.make_url("/v1")),
            "api_key": key,
            "retry_backoff_seconds": 0,
            "transport": transport,
        }
        config = make_config(tmp_path, providers={"together": provider}, default="together")
        return await start_gateway(config), upstream.app[TOGETHER], upstream

    return start


async def upload(gw: Gateway, lines: list[dict[str, Any]]) -> str:
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    return uploaded.id


async def create(gw: Gateway, file_id: str) -> Any:
    return await gw.client.batches.create(
        input_file_id=file_id, endpoint=CHAT, completion_window="24h"
    )


def _leaks(text: str, state: FakeTogetherState) -> list[str]:
    found = [s for s in (KEY, USER_ID, "api.together.xyz", "127.0.0.1") if s in text]
    found += [job_id for job_id in state.batches if job_id in text]
    return found + [file_id for file_id in state.files if file_id in text]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_whole_sdk_flow(
    start_together: Callable[..., Awaitable[Started]], transport: str
) -> None:
    gw, state, _ = await start_together(transport=transport)
    lines = [chat_line(0), chat_line(1, model=FAIL_MODEL), chat_line(2), chat_line(3)]
    file_id = await upload(gw, lines)
    batch = await create(gw, file_id)
    assert batch.status in ("validating", "in_progress")
    assert batch.request_counts is not None and batch.request_counts.total == 4

    # What Together received: the key as a Bearer token, a batch-api upload named after the
    # gateway file, and its own line shape.
    assert set(state.auth_headers) == {f"Bearer {KEY}"}
    assert state.upload_fields == [
        {"purpose": "batch-api", "file_name": f"{file_id}.jsonl", "file_type": "jsonl"}
    ]
    assert state.uploaded_lines == [
        [{"custom_id": x["custom_id"], "body": x["body"]} for x in lines]
    ]
    (job,) = state.batches.values()
    assert job["endpoint"] == CHAT

    seen = await gw.client.batches.retrieve(batch.id)
    if seen.status == "in_progress":  # progress 50% of 4 requests
        assert seen.request_counts is not None and seen.request_counts.completed == 2
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert done.completed_at is not None and done.completed_at > 1_700_000_000
    assert done.expires_at is not None and done.expires_at > done.completed_at
    assert done.model == "gpt-4o-mini"
    assert done.output_file_id and done.error_file_id
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (4, 3)
    assert done.request_counts.failed == 1

    output = (await gw.client.files.content(done.output_file_id)).text
    rows = [json.loads(r) for r in output.splitlines()]
    assert [r["custom_id"] for r in rows] == ["req-0", "req-2", "req-3"]
    for row in rows:
        assert set(row) == {"id", "custom_id", "response", "error"} and row["error"] is None
        assert row["id"].startswith("batch_req_")
        assert row["response"]["status_code"] == 200
        assert row["response"]["body"]["object"] == "chat.completion"
    errors = [
        json.loads(r) for r in (await gw.client.files.content(done.error_file_id)).text.splitlines()
    ]
    assert len(errors) == 1 and errors[0]["custom_id"] == "req-1"
    assert errors[0]["response"] is None
    assert errors[0]["error"]["code"] == "invalid_model"
    assert errors[0]["error"]["message"].startswith("Invalid model specified: fail-model (job ")
    assert not _leaks(output + json.dumps(errors), state)

    listed = [b.id async for b in gw.client.batches.list()]
    assert listed == [batch.id]
    assert not _leaks(done.model_dump_json(), state)


async def test_cancel(start_together: Callable[..., Awaitable[Started]]) -> None:
    gw, state, _ = await start_together()
    batch = await create(gw, await upload(gw, [chat_line(0), chat_line(1)]))
    cancelled = await gw.client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert [j["status"] for j in state.batches.values()] == ["CANCELLED"]
    assert ("POST", f"/v1/batches/{next(iter(state.batches))}/cancel") in state.requests


async def test_error_bodies_map_without_leaks(
    start_together: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_together()
    file_id = await upload(gw, [chat_line(0)])
    # A batch error body `{"error": "<text>"}` that names the job, user, key and host.
    state.fail_next["POST /v1/batches"] = [400]
    with pytest.raises(openai.BadRequestError) as rejected:
        await create(gw, file_id)
    assert "upstream said 400" in rejected.value.message
    assert not _leaks(rejected.value.message, state)
    assert [b async for b in gw.client.batches.list()] == []

    # A refused key: the gateway's own words.
    bad_gw, bad_state, _ = await start_together(key="tg-wrong-key-987654321")
    with pytest.raises(openai.APIStatusError) as refused:
        await create(bad_gw, await upload(bad_gw, [chat_line(0)]))
    assert "credentials" in refused.value.message
    assert "tg-wrong-key" not in refused.value.message and not _leaks(
        refused.value.message, bad_state
    )


async def test_a_line_together_cannot_take_fails_the_create(
    start_together: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_together()
    file_id = await upload(gw, [chat_line(0), chat_line(1, custom_id="y" * 70)])
    with pytest.raises(openai.BadRequestError) as rejected:
        await create(gw, file_id)
    assert "Line 2" in rejected.value.message and "64" in rejected.value.message
    assert state.batches == {}


async def test_create_of_unknown_outcome_is_found_not_repeated(
    start_together: Callable[..., Awaitable[Started]],
) -> None:
    """A 500 after the job was made: the lookup finds it by its input file; one job."""
    gw, state, _ = await start_together(error_after_create=1)
    batch = await create(gw, await upload(gw, [chat_line(0), chat_line(1)]))
    await gw.service.settle_pending()
    assert len(state.batches) == 1
    assert ("GET", "/v1/batches") in state.requests
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert len(state.batches) == 1


async def test_adapter_lookups_and_files(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    server = await aiohttp_server(make_together_upstream(KEY))
    fake = server.app[TOGETHER]
    http = HTTPSettings(base_url=str(server.make_url("/v1")))
    state = MemoryState()
    adapter = TogetherProvider(
        "tg", frozenset({CHAT, "/v1/embeddings"}), http, api_key=KEY, state=state
    )
    try:
        assert adapter.endpoints == frozenset({CHAT})
        path = tmp_path / "in.jsonl"
        path.write_bytes(jsonl([chat_line(0), chat_line(1), chat_line(2)]))
        gateway_file = "file-" + "a" * 24
        uploaded = await adapter.upload_file(
            InputFile(path, f"{gateway_file}.jsonl", path.stat().st_size, 3, CHAT, ("gpt-4o-mini",))
        )
        assert await state.load(uploaded) == {"lines": 3}
        assert await adapter.tagged_files(0) == [(gateway_file, uploaded)]

        request = BatchRequest(input_file_id=uploaded, endpoint=CHAT)
        made = await adapter.create_batch(request)
        assert made.request_counts is not None and made.request_counts.total == 3
        other = await adapter.create_batch(BatchRequest(input_file_id=uploaded, endpoint=CHAT))
        found = await adapter.candidates(request, made.timestamps["expires_at"] or 0)
        assert found == []  # `since` a day ahead: nothing made since
        found = await adapter.candidates(request, int(time.time()))
        assert [b.id for b in found] == [other.id, made.id]
        assert await adapter.candidates(BatchRequest("file-other", CHAT), 0) == []

        with pytest.raises(ProviderError) as missing:
            await adapter.get_batch("00000000-0000-0000-0000-000000000000")
        assert missing.value.kind == "not_found"
        assert not _leaks(missing.value.message, fake)
        with pytest.raises(ProviderError) as refused:
            await adapter.create_batch(BatchRequest(uploaded, "/v1/embeddings"))
        assert refused.value.kind == "bad_request"

        await adapter.delete_file(uploaded)
        assert uploaded not in fake.files and await state.load(uploaded) is None
    finally:
        await adapter.close()
