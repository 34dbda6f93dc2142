from __future__ import annotations

import asyncio
import json
import types
from pathlib import Path
from typing import Any

import pytest

from gateway.blobs import LocalBlobs
from providers import sandbox
from providers.base import BatchRequest, InputFile, ProviderError
from providers.context import ProviderContext
from providers.sandbox import (
    SandboxProvider,
    embedding_vector,
    line_error,
    result_body,
    result_line,
)
from tests.support import MemoryState

CHAT = "/v1/chat/completions"
ENDPOINTS = frozenset({CHAT, "/v1/embeddings", "/v1/completions", "/v1/responses"})


def chat_line(
    custom_id: str, text: str = "hello there", model: str = "gpt-4o-mini"
) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def make_provider(
    directory: Path, state: MemoryState | None = None, **delays: float
) -> SandboxProvider:
    """A sandbox keeping its bytes in a blob folder `directory` and its state in `state`."""
    timing = {
        "validate_seconds": 0.0,
        "line_seconds": 0.0,
        "finalize_seconds": 0.0,
        "cancel_seconds": 0.0,
    }
    context = ProviderContext("sandbox", ENDPOINTS, state or MemoryState(), LocalBlobs(directory))
    return SandboxProvider(context, **(timing | delays))


async def submit(provider: SandboxProvider, tmp_path: Path, lines: list[dict[str, Any]]) -> str:
    src = tmp_path / "input.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    models = tuple(dict.fromkeys(line["body"].get("model", "") for line in lines))
    upload = InputFile(src, "input.jsonl", src.stat().st_size, len(lines), CHAT, models)
    file_id = await provider.upload_file(upload)
    batch = await provider.create_batch(BatchRequest(input_file_id=file_id, endpoint=CHAT))
    assert batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == len(lines)
    return batch.id


async def read_lines(provider: SandboxProvider, file_id: str | None) -> dict[str, dict[str, Any]]:
    assert file_id is not None
    async with provider.open_file_content(file_id) as chunks:
        data = b"".join([chunk async for chunk in chunks])
    assert data.endswith(b"\n")
    rows = [json.loads(raw) for raw in data.splitlines()]
    return {row["custom_id"]: row for row in rows}


class Clock:
    """Replaces the sandbox's wall clock so phase boundaries are exact."""

    def __init__(self, t: float) -> None:
        self.t = t

    def time(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_000_000.0)
    monkeypatch.setattr(sandbox, "time", types.SimpleNamespace(time=fake.time))
    return fake


async def test_full_lifecycle_with_zero_delays(tmp_path: Path) -> None:
    provider = make_provider(tmp_path / "sbx")
    batch_id = await submit(
        provider, tmp_path, [chat_line(f"r-{i}", f"say {i} words") for i in range(3)]
    )

    batch = await provider.get_batch(batch_id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 0)
    assert batch.error_file_id is None
    assert batch.model == "gpt-4o-mini"
    assert set(batch.timestamps) >= {
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "expires_at",
    }
    assert batch.usage == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 18,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 27,
    }

    rows = await read_lines(provider, batch.output_file_id)
    assert sorted(rows) == ["r-0", "r-1", "r-2"]
    row = rows["r-1"]
    assert row["id"].startswith("batch_req_") and row["error"] is None
    assert row["response"]["status_code"] == 200
    body = row["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "Sandbox reply to: say 1 words"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}

    info = await provider.get_file(batch.output_file_id or "")
    assert info.filename == f"{batch_id}_output.jsonl"  # the id already starts with "batch_"
    again = await provider.get_batch(batch_id)
    assert again.output_file_id == batch.output_file_id  # generated once


async def test_failed_lines_go_to_error_file(tmp_path: Path) -> None:
    provider = make_provider(tmp_path)
    no_messages = chat_line("no-messages")
    del no_messages["body"]["messages"]
    lines = [chat_line("ok"), no_messages, chat_line("bad-model", model="unknown-model-x")]
    batch = await provider.get_batch(await submit(provider, tmp_path, lines))

    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)
    assert list(await read_lines(provider, batch.output_file_id)) == ["ok"]
    errors = await read_lines(provider, batch.error_file_id)
    missing = errors["no-messages"]
    assert missing["error"] is None
    assert missing["response"]["status_code"] == 400
    assert missing["response"]["body"]["error"]["param"] == "messages"
    assert missing["response"]["body"]["error"]["type"] == "invalid_request_error"
    unknown = errors["bad-model"]["response"]
    assert (unknown["status_code"], unknown["body"]["error"]["code"]) == (404, "model_not_found")


async def test_cancel_before_any_line_ran(tmp_path: Path) -> None:
    provider = make_provider(tmp_path, line_seconds=1000.0)
    batch_id = await submit(provider, tmp_path, [chat_line("a"), chat_line("b")])

    cancelling = await provider.cancel_batch(batch_id)
    assert cancelling.status == "cancelling"
    assert cancelling.timestamps["cancelling_at"] is not None

    batch = await provider.get_batch(batch_id)
    assert batch.status == "cancelled"
    assert batch.output_file_id is None
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 2)
    errors = await read_lines(provider, batch.error_file_id)
    assert {row["error"]["code"] for row in errors.values()} == {"batch_cancelled"}
    assert all(row["response"] is None for row in errors.values())

    with pytest.raises(ProviderError) as info:
        await provider.cancel_batch(batch_id)
    assert info.value.kind == "bad_request"
    assert info.value.message == "Cannot cancel a batch with status 'cancelled'."


async def test_cancel_midway_keeps_finished_lines(tmp_path: Path, clock: Clock) -> None:
    provider = make_provider(tmp_path, validate_seconds=1.0, line_seconds=1.0, cancel_seconds=1.0)
    lines = [
        chat_line("r-0"),
        chat_line("r-1", model="unknown-1"),
        chat_line("r-2"),
        chat_line("r-3"),
    ]
    batch_id = await submit(provider, tmp_path, lines)

    clock.t += 2.5  # 1.5 s into in_progress: r-0 done, r-1 not yet
    running = await provider.get_batch(batch_id)
    assert running.status == "in_progress"
    assert running.request_counts is not None and running.request_counts.completed == 1

    clock.t += 1.0  # r-1 (failed) and r-0 done at cancel time
    cancelling = await provider.cancel_batch(batch_id)
    assert cancelling.status == "cancelling"
    assert cancelling.request_counts is not None
    assert (cancelling.request_counts.completed, cancelling.request_counts.failed) == (1, 1)
    assert (await provider.get_batch(batch_id)).status == "cancelling"

    clock.t += 1.0
    batch = await provider.get_batch(batch_id)
    assert batch.status == "cancelled"
    assert batch.timestamps["cancelled_at"] == int(clock.t)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 3)
    assert list(await read_lines(provider, batch.output_file_id)) == ["r-0"]
    errors = await read_lines(provider, batch.error_file_id)
    assert errors["r-1"]["response"]["status_code"] == 404
    assert errors["r-2"]["error"]["code"] == errors["r-3"]["error"]["code"] == "batch_cancelled"


async def test_phases_follow_the_clock(tmp_path: Path, clock: Clock) -> None:
    provider = make_provider(tmp_path, validate_seconds=1.0, line_seconds=1.0, finalize_seconds=1.0)
    batch_id = await submit(provider, tmp_path, [chat_line("a"), chat_line("b")])
    seen = []
    for _ in range(5):
        batch = await provider.get_batch(batch_id)
        seen.append(batch.status)
        clock.t += 1.0
    assert seen == ["validating", "in_progress", "in_progress", "finalizing", "completed"]
    assert "completed_at" in batch.timestamps and "in_progress_at" in batch.timestamps

    with pytest.raises(ProviderError) as info:
        await provider.cancel_batch(batch_id)
    assert info.value.message == "Cannot cancel a batch with status 'completed'."


async def test_restart_sees_the_same_batch(tmp_path: Path) -> None:
    directory, state = tmp_path / "blobs", MemoryState()
    first = make_provider(directory, state)
    batch_id = await submit(first, tmp_path, [chat_line("a")])
    done = await first.get_batch(batch_id)

    second = make_provider(directory, state, validate_seconds=100.0)  # timing is fixed per batch
    again = await second.get_batch(batch_id)
    assert again.status == "completed"
    assert again.output_file_id == done.output_file_id
    assert list(await read_lines(second, again.output_file_id)) == ["a"]


async def test_unknown_ids_and_endpoints(tmp_path: Path) -> None:
    provider = make_provider(tmp_path)
    for call in (
        provider.get_batch("batch_sbx" + "0" * 24),
        provider.cancel_batch("../../etc/passwd"),
        provider.get_file("file-sbx" + "0" * 24),
        provider.create_batch(BatchRequest(input_file_id="file-nope", endpoint=CHAT)),
    ):
        with pytest.raises(ProviderError) as info:
            await call
        assert info.value.kind == "not_found"
    with pytest.raises(ProviderError) as info:
        async with provider.open_file_content("file-sbx" + "1" * 24):
            pass
    assert info.value.kind == "not_found"
    with pytest.raises(ProviderError) as info:
        await provider.create_batch(BatchRequest(input_file_id="x", endpoint="/v1/videos"))
    assert info.value.kind == "bad_request"


def test_embeddings_are_deterministic() -> None:
    body = {"model": "text-embedding-3-small", "input": ["a cat", "a dog"]}
    first = result_body("/v1/embeddings", body, seed="s", created=0)
    assert first == result_body("/v1/embeddings", body, seed="s", created=0)
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert len(first["data"][0]["embedding"]) == 8
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    assert first["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert len(embedding_vector("x", 20)) == 20
    assert embedding_vector("x", 20)[:8] == embedding_vector("x")


@pytest.mark.parametrize(
    ("endpoint", "body", "kind"),
    [
        ("/v1/completions", {"model": "m", "prompt": "Once upon"}, "text_completion"),
        ("/v1/responses", {"model": "m", "input": "hi"}, "response"),
        ("/v1/moderations", {"input": "hi"}, None),
        ("/v1/images/generations", {"model": "m", "prompt": "a cat"}, "sandbox.result"),
    ],
)
def test_other_endpoint_bodies(endpoint: str, body: dict[str, Any], kind: str | None) -> None:
    line, ok = result_line(
        "batch_x", 0, endpoint, json.dumps({"custom_id": "c", "body": body}), created=5
    )
    assert ok and line["custom_id"] == "c"
    result = line["response"]["body"]
    assert result.get("object") == kind
    if endpoint == "/v1/responses":
        assert result["output"][0]["content"][0]["text"] == "Sandbox reply to: hi"
        assert (
            result["usage"]["total_tokens"]
            == result["usage"]["input_tokens"] + result["usage"]["output_tokens"]
        )
    if endpoint == "/v1/moderations":
        assert result["results"] == [{"flagged": False, "categories": {}, "category_scores": {}}]


def test_line_error_required_params() -> None:
    assert line_error("/v1/embeddings", {"model": "m"}) is not None
    assert line_error("/v1/completions", {"model": "m", "input": "x"}) is not None
    assert line_error("/v1/chat/completions", {"model": "m", "messages": []}) is not None
    assert line_error("/v1/moderations", {"input": "fine"}) is None


async def test_two_replicas_finishing_one_batch_agree(tmp_path: Path) -> None:
    directory, state = tmp_path / "blobs", MemoryState()
    first, second = make_provider(directory, state), make_provider(directory, state)
    batch_id = await submit(first, tmp_path, [chat_line("a"), chat_line("b", model="unknown-x")])
    one, two = await asyncio.gather(first.get_batch(batch_id), second.get_batch(batch_id))
    assert (one.output_file_id, one.error_file_id) == (two.output_file_id, two.error_file_id)
    assert list(await read_lines(second, one.output_file_id)) == ["a"]
    assert list(await read_lines(first, two.error_file_id)) == ["b"]
    assert len(list(directory.glob("upstream-file-sbx*"))) == 3  # input, output, error


async def test_concurrent_creates_are_all_found_by_tag(tmp_path: Path) -> None:
    provider = make_provider(tmp_path / "blobs", line_seconds=1000.0)
    src = tmp_path / "input.jsonl"
    src.write_text(json.dumps(chat_line("a")) + "\n")
    upload = InputFile(src, "input.jsonl", src.stat().st_size, 1, CHAT, ("gpt-4o-mini",))
    file_id = await provider.upload_file(upload)
    tags = [f"batch_{i}" for i in range(5)]
    made = await asyncio.gather(
        *(
            provider.create_batch(
                BatchRequest(input_file_id=file_id, endpoint=CHAT, gateway_batch_id=tag)
            )
            for tag in tags
        )
    )
    found = dict(await provider.tagged_batches(0))
    assert {tag: batch.id for tag, batch in found.items()} == {
        tag: batch.id for tag, batch in zip(tags, made, strict=True)
    }
