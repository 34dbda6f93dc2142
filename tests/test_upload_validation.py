"""Invalid batch input files: a 400 naming the line, and nothing left behind."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.conftest import Gateway, StartGateway
from tests.support import chat_line, jsonl, make_config


def leftovers(gw: Gateway) -> list[Path]:
    blob_dir = gw.config.blobs.dir
    return [p for p in blob_dir.rglob("*") if p.is_file()]


CASES = {
    "bad json": (jsonl([chat_line(0), "{not json", chat_line(2)]), 2, "not valid JSON"),
    "not an object": (jsonl([chat_line(0), "[1, 2]"]), 2, "JSON object"),
    "duplicate custom_id": (
        jsonl([chat_line(0), chat_line(1), chat_line(2, custom_id="req-1")]),
        3,
        "duplicate custom_id",
    ),
    "missing custom_id": (
        jsonl([chat_line(0), {**chat_line(1), "custom_id": None}]),
        2,
        "custom_id",
    ),
    "mixed urls": (jsonl([chat_line(0), chat_line(1, url="/v1/embeddings")]), 2, "differs"),
    "unknown url": (jsonl([chat_line(0, url="/v1/nope")]), 1, "'url' must be one of"),
    "method GET": (jsonl([chat_line(0), chat_line(1, method="GET")]), 2, "'method'"),
    "missing model": (
        jsonl([chat_line(0), {**chat_line(1), "body": {"messages": []}}]),
        2,
        "body.model",
    ),
    "body not object": (jsonl([{**chat_line(0), "body": "x"}]), 1, "'body'"),
    "too many lines": (jsonl([chat_line(i) for i in range(6)]), 6, "more than 5 requests"),
}


@pytest.fixture
async def small_limits(start_gateway: StartGateway, tmp_path: Path) -> Gateway:
    config = make_config(tmp_path, limits={"max_file_lines": 5, "max_file_bytes": 4096})
    return await start_gateway(config)


@pytest.mark.parametrize("case", list(CASES))
async def test_invalid_file_names_the_line_and_stores_nothing(
    small_limits: Gateway, case: str
) -> None:
    content, line, reason = CASES[case]
    with pytest.raises(openai.BadRequestError) as info:
        await small_limits.client.files.create(
            file=("bad.jsonl", io.BytesIO(content)), purpose="batch"
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert f"Line {line}:" in error["message"]
    assert reason in error["message"]
    assert error["param"] == "file"
    assert error["type"] == "invalid_request_error"
    assert [f async for f in small_limits.client.files.list()] == []
    assert leftovers(small_limits) == []


async def test_empty_file_is_rejected(small_limits: Gateway) -> None:
    for content in (b"", b"\n\n"):
        with pytest.raises(openai.BadRequestError) as info:
            await small_limits.client.files.create(
                file=("empty.jsonl", io.BytesIO(content)), purpose="batch"
            )
        assert "no requests" in str(info.value)
    assert [f async for f in small_limits.client.files.list()] == []
    assert leftovers(small_limits) == []


async def test_file_over_the_byte_limit_is_413(small_limits: Gateway) -> None:
    content = jsonl([chat_line(i, model="m" * 1500) for i in range(4)])
    assert len(content) > 4096
    with pytest.raises(openai.APIStatusError) as info:
        await small_limits.client.files.create(
            file=("big.jsonl", io.BytesIO(content)), purpose="batch"
        )
    assert info.value.status_code == 413
    assert leftovers(small_limits) == []


async def test_valid_file_records_size_hash_lines_endpoint_models(gateway: Gateway) -> None:
    content = jsonl([chat_line(0), chat_line(1, model="gpt-4o"), chat_line(2)])
    uploaded = await gateway.client.files.create(
        file=("ok.jsonl", io.BytesIO(content)), purpose="batch"
    )
    record = await gateway.service.store.get_file(uploaded.id)
    assert record is not None
    assert record.bytes == len(content)
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert record.line_count == 3
    assert record.endpoint == "/v1/chat/completions"
    assert record.models == ("gpt-4o", "gpt-4o-mini")
    assert gateway.config.blobs.dir.joinpath(uploaded.id).read_bytes() == content


async def test_wrong_purpose_and_missing_parts(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await gateway.client.files.create(
            file=("x.jsonl", io.BytesIO(jsonl([chat_line(0)]))), purpose="fine-tune"
        )
    assert info.value.body["param"] == "purpose"  # type: ignore[index]

    async with gateway.http.post(gateway.url("/v1/files"), data={"purpose": "batch"}) as resp:
        assert resp.status == 415  # urlencoded, not multipart
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("purpose", "batch")
    form.add_field("note", "no file here")
    async with gateway.http.post(gateway.url("/v1/files"), data=form) as resp:
        body = await resp.json()
        assert resp.status == 400
        assert body["error"]["param"] == "file"
    assert [f async for f in gateway.client.files.list()] == []
    assert leftovers(gateway) == []


async def test_expires_after_is_honoured(gateway: Gateway) -> None:
    uploaded = await gateway.client.files.create(
        file=("x.jsonl", io.BytesIO(jsonl([chat_line(0)]))),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert uploaded.expires_at == uploaded.created_at + 7200
    with pytest.raises(openai.BadRequestError):
        await gateway.client.files.create(
            file=("x.jsonl", io.BytesIO(jsonl([chat_line(0)]))),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 5},
        )
    assert len([f async for f in gateway.client.files.list()]) == 1


ANCHOR, SECONDS = "expires_after[anchor]", "expires_after[seconds]"
# Form fields -> the param the 400 names.
BAD_EXPIRES_AFTER = {
    "one JSON field": ({"expires_after": '{"anchor": "created_at", "seconds": 3600}'}, None),
    "unknown part": ({"expires_after[days]": "1"}, None),
    "unclosed bracket": ({"expires_after[seconds": "3600"}, None),
    "dotted name": ({"expires_after.seconds": "3600"}, None),
    "seconds not a number": ({ANCHOR: "created_at", SECONDS: "an hour"}, SECONDS),
    "seconds below 3600": ({ANCHOR: "created_at", SECONDS: "3599"}, SECONDS),
    "seconds above 30 days": ({ANCHOR: "created_at", SECONDS: "2592001"}, SECONDS),
    "seconds missing": ({ANCHOR: "created_at"}, SECONDS),
    "unknown anchor": ({ANCHOR: "last_used_at", SECONDS: "3600"}, ANCHOR),
}


def upload_form(fields: dict[str, str], *, after_file: bool = False) -> aiohttp.FormData:
    """A form with `fields` before the file part (as the SDKs send them), or after it."""
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    if not after_file:
        for name, value in fields.items():
            form.add_field(name, value)
    form.add_field("file", jsonl([chat_line(0)]), filename="in.jsonl")
    if after_file:
        for name, value in fields.items():
            form.add_field(name, value)
    return form


@pytest.mark.parametrize("after_file", [False, True], ids=["before file", "after file"])
@pytest.mark.parametrize("case", list(BAD_EXPIRES_AFTER))
async def test_malformed_expires_after_is_400_naming_it_and_stores_nothing(
    gateway: Gateway, case: str, after_file: bool
) -> None:
    fields, param = BAD_EXPIRES_AFTER[case]
    form = upload_form(fields, after_file=after_file)
    async with gateway.http.post(gateway.url("/v1/files"), data=form) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == (param or "expires_after"), error
    assert [f async for f in gateway.client.files.list()] == []
    assert leftovers(gateway) == []


async def test_expires_after_sent_after_the_file_is_refused_not_ignored(gateway: Gateway) -> None:
    # The file is stored as its part streams in, with the expiry known by then.
    form = upload_form({ANCHOR: "created_at", SECONDS: "3600"}, after_file=True)
    async with gateway.http.post(gateway.url("/v1/files"), data=form) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["param"] == "expires_after" and "before the 'file' part" in error["message"]
    assert [f async for f in gateway.client.files.list()] == []
    assert leftovers(gateway) == []


@pytest.mark.parametrize("seconds", [3600, 2_592_000])
async def test_expires_after_at_its_bounds_is_accepted(gateway: Gateway, seconds: int) -> None:
    form = upload_form({ANCHOR: "created_at", SECONDS: str(seconds)})
    async with gateway.http.post(gateway.url("/v1/files"), data=form) as resp:
        assert resp.status == 200
        uploaded = await resp.json()
    assert uploaded["expires_at"] == uploaded["created_at"] + seconds


@pytest.mark.parametrize("after_file", [False, True], ids=["before file", "after file"])
async def test_malformed_expires_after_under_an_idempotency_key_is_answered_alike(
    gateway: Gateway, after_file: bool
) -> None:
    answers = []
    for _ in range(2):
        form = upload_form({ANCHOR: "created_at", SECONDS: "soon"}, after_file=after_file)
        headers = {"Idempotency-Key": f"bad-expiry-{after_file}"}
        async with gateway.http.post(gateway.url("/v1/files"), data=form, headers=headers) as r:
            answers.append((r.status, await r.read()))
    assert answers[0] == answers[1] and answers[0][0] == 400
    assert [f async for f in gateway.client.files.list()] == []
    assert leftovers(gateway) == []
