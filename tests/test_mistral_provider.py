"""The `type: mistral` adapter: translations on Mistral's documented shapes, and the whole
openai SDK flow through the gateway against a fake Mistral Batch API."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from providers.lines import LineError
from providers.mistral.translate import group_status, parse_job, to_mistral_line, to_openai_line
from tests.conftest import Gateway, StartGateway
from tests.fakes.mistral_upstream import (
    MISTRAL,
    UNKNOWN_MODEL,
    FakeMistralState,
    make_mistral_upstream,
)
from tests.support import chat_line, jsonl, make_config
from tests.test_flow_sdk import wait_terminal

KEY = "mistral-secret-key-123"
Started = tuple[Gateway, FakeMistralState, TestServer]

# The docs' input example (capabilities/batch) and a BatchJob as the SDK's model has it.
DOCS_LINE = {
    "custom_id": "0",
    "body": {
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "What is the best French cheese?"}],
    },
}
JOB = {
    "id": "b8a2f6e0-3c1d-4e5f-9a7b-0c1d2e3f4a5b",
    "object": "batch",
    "input_files": ["fe3343a2-3b8d-404b-ba32-a78dede2614a"],
    "metadata": {"gateway_batch_id": "batch_abc"},
    "endpoint": "/v1/chat/completions",
    "model": "mistral-small-latest",
    "output_file": "c0ffee00-3b8d-404b-ba32-a78dede2614a",
    "error_file": None,
    "errors": [{"message": "2 requests failed", "count": 2}],
    "status": "SUCCESS",
    "created_at": 1_750_000_000,
    "total_requests": 5,
    "completed_requests": 5,
    "succeeded_requests": 3,
    "failed_requests": 2,
    "started_at": 1_750_000_010,
    "completed_at": 1_750_000_500,
}


def test_input_line_loses_method_url_and_model() -> None:
    openai_line = {"method": "POST", "url": "/v1/chat/completions", **DOCS_LINE}
    openai_line["body"] = {"model": "mistral-small-latest", **DOCS_LINE["body"]}
    assert to_mistral_line(openai_line) == DOCS_LINE
    with pytest.raises(LineError, match="body.model"):
        to_mistral_line(DOCS_LINE)


def test_job_parsing_and_status_mapping() -> None:
    job = parse_job(JOB)
    assert (job.status, job.total, job.succeeded, job.failed) == ("completed", 5, 3, 2)
    assert job.tag == "batch_abc" and job.part() is None
    assert job.output_file == JOB["output_file"] and job.error_file is None
    assert job.errors[0]["message"] == "2 requests failed"
    expected = {
        "QUEUED": "validating",
        "RUNNING": "in_progress",
        "SUCCESS": "completed",
        "FAILED": "failed",
        "TIMEOUT_EXCEEDED": "expired",
        "CANCELLATION_REQUESTED": "cancelling",
        "CANCELLED": "cancelled",
    }
    for mistral, openai_status in expected.items():
        assert parse_job({**JOB, "status": mistral}).status == openai_status
    assert group_status(["completed", "in_progress"]) == "in_progress"
    assert group_status(["completed", "failed"]) == "completed"
    assert group_status(["failed", "failed"]) == "failed"
    assert group_status(["completed", "expired"]) == "expired"
    assert group_status(["cancelling", "in_progress"]) == "cancelling"


def test_result_lines_in_openai_shape() -> None:
    body = {"id": "x", "object": "chat.completion", "choices": []}
    ok = {
        "id": "batch-1",
        "custom_id": "0",
        "response": {"status_code": 200, "body": body},
        "error": None,
    }
    line = to_openai_line(ok)
    assert line["response"] == {"status_code": 200, "request_id": "", "body": body}
    assert line["error"] is None and line["custom_id"] == "0"
    mistral_error = {
        "object": "error",
        "message": "Invalid model",
        "type": "invalid_request_error",
        "param": None,
        "code": "1500",
    }
    failed = {"custom_id": "1", "response": {"status_code": 400, "body": mistral_error}}
    assert to_openai_line(failed)["response"]["body"] == {
        "error": {
            "message": "Invalid model",
            "type": "invalid_request_error",
            "param": None,
            "code": "1500",
        }
    }
    detail = {
        "custom_id": "2",
        "response": {"status_code": 422, "body": {"detail": [{"msg": "field required"}]}},
    }
    assert to_openai_line(detail)["response"]["body"]["error"]["message"] == "field required"
    bare = to_openai_line({"custom_id": "3", "error": {"message": "timeout", "code": "x"}})
    assert bare["response"] is None and bare["error"] == {"code": "x", "message": "timeout"}


@pytest.fixture
async def start_mistral(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> Callable[..., Awaitable[Started]]:
    async def start(
        *, key: str = KEY, provider: dict[str, Any] | None = None, **options: Any
    ) -> Started:
        upstream = await aiohttp_server(make_mistral_upstream(KEY, **options))
        config = {
            "type": "mistral",
            "base_url": str(upstream.make_url("/v1")),
            "api_key": key,
            "retry_backoff_seconds": 0,
            **(provider or {}),
        }
        gw = await start_gateway(
            make_config(tmp_path, providers={"mistral": config}, default="mistral")
        )
        return gw, upstream.app[MISTRAL], upstream

    return start


async def run(gw: Gateway, lines: list[Any]) -> Any:
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return await gw.client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def lines_of(gw: Gateway, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    text = (await gw.client.files.content(file_id)).text
    return [json.loads(line) for line in text.splitlines()]


def assert_openai_line(line: dict[str, Any]) -> None:
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_")
    if line["response"] is not None:
        assert set(line["response"]) == {"status_code", "request_id", "body"}
        assert line["response"]["request_id"].startswith("req_")


async def test_whole_sdk_flow(start_mistral: Callable[..., Awaitable[Started]]) -> None:
    gw, state, upstream = await start_mistral()
    lines = [chat_line(i, model="mistral-small-latest") for i in range(3)]
    lines[1]["body"]["messages"][0]["content"] = "FAIL"
    batch = await run(gw, lines)
    assert batch.status == "validating"
    (body,) = state.job_bodies
    assert body["model"] == "mistral-small-latest" and body["endpoint"] == "/v1/chat/completions"
    assert body["timeout_hours"] == 24 and body["metadata"] == {"gateway_batch_id": batch.id}
    assert {auth for _, _, auth in state.calls} == {f"Bearer {KEY}"}
    uploaded = next(iter(state.contents.values()))
    assert json.loads(uploaded.splitlines()[0]) == {
        "custom_id": "req-0",
        "body": {"messages": [{"role": "user", "content": "question 0"}]},
    }

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (
        done.request_counts.total,
        done.request_counts.completed,
        done.request_counts.failed,
    ) == (3, 2, 1)
    assert done.in_progress_at is not None and done.completed_at is not None
    output = await lines_of(gw, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["req-0", "req-2"]
    for line in output:
        assert_openai_line(line)
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"].startswith("fake reply")
    (error,) = await lines_of(gw, done.error_file_id)
    assert_openai_line(error)
    assert error["custom_id"] == "req-1" and error["response"]["status_code"] == 400
    envelope = error["response"]["body"]["error"]
    assert envelope["type"] == "invalid_request_error" and envelope["code"] == "3051"
    job_id = next(iter(state.jobs))
    assert job_id not in json.dumps(error)  # the job id in Mistral's message is swapped out
    assert [b.id async for b in gw.client.batches.list()] == [batch.id]
    host = f"{upstream.host}:{upstream.port}"
    assert not any(host.encode() in b or KEY.encode() in b for b in gw.bodies)


async def test_cancel(start_mistral: Callable[..., Awaitable[Started]]) -> None:
    gw, state, _ = await start_mistral(polls_to_end=1000)
    batch = await run(gw, [chat_line(i, model="mistral-small-latest") for i in range(3)])
    cancelled = await gw.client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "cancelled"
    assert any(method == "POST" and path.endswith("/cancel") for method, path, _ in state.calls)
    assert [line["custom_id"] for line in await lines_of(gw, done.output_file_id)] == ["req-0"]


async def test_timeout_exceeded_is_expired_with_partial_output(
    start_mistral: Callable[..., Awaitable[Started]],
) -> None:
    gw, _, _ = await start_mistral(expire=True)
    batch = await run(gw, [chat_line(i, model="mistral-small-latest") for i in range(3)])
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "expired" and done.expired_at is not None
    assert [line["custom_id"] for line in await lines_of(gw, done.output_file_id)] == ["req-0"]


async def test_mixed_models_split_into_one_job_per_model(
    start_mistral: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_mistral()
    models = ["mistral-small-latest", "mistral-large-latest", "mistral-small-latest"]
    batch = await run(gw, [chat_line(i, model=m) for i, m in enumerate(models)])
    assert sorted(b["model"] for b in state.job_bodies) == [
        "mistral-large-latest",
        "mistral-small-latest",
    ]
    for body in state.job_bodies:
        assert body["metadata"]["gateway_batch_id"] == batch.id
        assert body["metadata"]["gateway_parts"] == "2"
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.total == 3
    output = await lines_of(gw, done.output_file_id)
    replies = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in output
    }
    assert replies == {f"req-{i}": f"fake reply to req-{i} by {m}" for i, m in enumerate(models)}
    assert len({line["id"] for line in output}) == 3


async def test_mixed_models_rejected_when_configured(
    start_mistral: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_mistral(provider={"mixed_models": "reject"})
    lines = [chat_line(0, model="mistral-small-latest"), chat_line(1, model="codestral-latest")]
    with pytest.raises(openai.BadRequestError) as info:
        await run(gw, lines)
    assert "codestral-latest" in info.value.message and "mistral-small-latest" in info.value.message
    assert state.job_bodies == [] and state.contents == {}


async def test_error_bodies_mapped_without_leaks(
    start_mistral: Callable[..., Awaitable[Started]],
) -> None:
    gw, _, upstream = await start_mistral()
    with pytest.raises(openai.BadRequestError) as info:
        await run(gw, [chat_line(0, model=UNKNOWN_MODEL)])
    assert "Invalid model" in info.value.message
    with pytest.raises(openai.BadRequestError) as missing:
        await run(
            gw,
            [
                {
                    "custom_id": "a",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"messages": []},
                }
            ],
        )
    assert "Line 1" in missing.value.message

    bad, _, _ = await start_mistral(key="wrong-key-999")
    with pytest.raises(openai.APIStatusError) as denied:
        await run(bad, [chat_line(0, model="mistral-small-latest")])
    assert denied.value.status_code == 502
    text = str(denied.value.body)
    assert "wrong-key-999" not in text and str(upstream.port) not in text


@pytest.mark.parametrize("faulty_part", [0, 1])
async def test_split_create_of_unknown_outcome_runs_each_model_once(
    start_mistral: Callable[..., Awaitable[Started]], faulty_part: int
) -> None:
    """A part made upstream but answered 500: the tag lookup finds every part made (the
    whole group, or a part the create made again then resumes from), never a duplicate."""
    gw, state, _ = await start_mistral()
    state.fail_on = "POST /v1/batch/jobs"
    state.fail_next = [None] * faulty_part + ["error_after"]  # type: ignore[list-item]
    models = ["mistral-small-latest", "codestral-latest"]
    batch = await run(gw, [chat_line(i, model=m) for i, m in enumerate(models)])
    assert sorted(b["model"] for b in state.job_bodies) == sorted(models)  # once each
    assert any(method == "GET" and path == "/v1/batch/jobs" for method, path, _ in state.calls)
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 2
    assert len(state.jobs) == 2


async def test_split_cancel_cancels_every_job(
    start_mistral: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_mistral(polls_to_end=1000)
    models = ["mistral-small-latest", "codestral-latest"]
    batch = await run(gw, [chat_line(i, model=m) for i, m in enumerate(models)])
    await gw.client.batches.cancel(batch.id)
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "cancelled"
    cancels = {path for method, path, _ in state.calls if path.endswith("/cancel")}
    assert cancels == {f"/v1/batch/jobs/{job_id}/cancel" for job_id in state.jobs}
    output = await lines_of(gw, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == ["req-0", "req-1"]


async def test_split_refused_for_one_model_stops_the_parts_made(
    start_mistral: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_mistral()
    lines = [chat_line(0, model="mistral-small-latest"), chat_line(1, model=UNKNOWN_MODEL)]
    with pytest.raises(openai.BadRequestError) as info:
        await run(gw, lines)
    assert "Invalid model" in info.value.message
    (job,) = state.jobs.values()
    assert job["model"] == "mistral-small-latest" and job["status"] == "CANCELLATION_REQUESTED"
    assert [b async for b in gw.client.batches.list()] == []
