"""Result files reach clients as OpenAI batch lines carrying gateway ids only.

The rewrite itself (`gateway.result_lines`) is tested without a server; then, through the
gateway with the openai SDK, an OpenAI-like and a llama-stack-like upstream, each with the
gateway's kept copy and with a relayed download.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.result_lines import INVALID_LINE, ResultLines, line_ids, normalize, normalize_line
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.support import chat_file, chat_line, jsonl, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_openai_provider import create, upload
from tests.test_output_keeper import kept

KEY = "sk-result-lines-upstream-321"
LINE_ID = re.compile(r"batch_req_[0-9a-f]{24}")
REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")
BATCH, FILE = "batch_gatewayaaaaaaaaaaaaaaaaaaaa", "file-gatewayaaaaaaaaaaaaaaaa"
BODY = {"id": "chatcmpl-1", "object": "chat.completion", "z": 1, "a": [1.5, None, "ü"]}


def rewrite(data: bytes, swap: dict[str, str] | None = None, **options: Any) -> bytes:
    lines = ResultLines(BATCH, FILE, swap, **options)
    return lines.feed(data) + lines.finish()


def parsed(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in data.splitlines()]


def check_line(line: Any, *, output: bool | None = None, any_body: bool = False) -> dict[str, Any]:
    """One line of an OpenAI output/error file, checked strictly (`BatchRequestOutput`);
    `any_body`: a body that came as neither an object nor JSON is passed on as it came."""
    assert isinstance(line, dict) and list(line) == ["id", "custom_id", "response", "error"]
    assert isinstance(line["id"], str) and LINE_ID.fullmatch(line["id"]), line["id"]
    assert line["custom_id"] is None or isinstance(line["custom_id"], str)
    response, error = line["response"], line["error"]
    assert (response is None) != (error is None), line
    if response is not None:
        assert list(response) == ["status_code", "request_id", "body"]
        status = response["status_code"]
        assert isinstance(status, int) and not isinstance(status, bool)
        assert isinstance(response["request_id"], str)
        assert REQUEST_ID.fullmatch(response["request_id"]), response["request_id"]
        assert any_body or isinstance(response["body"], dict)
        if output is not None:
            assert (200 <= status < 300) == output, line
    else:
        assert list(error) == ["code", "message"]
        assert error["code"] is None or isinstance(error["code"], str)
        assert isinstance(error["message"], str)
        assert output is not True, line
    return line


# The rewrite, without a server.


def test_an_openai_line_gets_gateway_ids_and_keeps_its_body_as_it_was() -> None:
    provider = {
        "id": "batch_req_UPprovider",
        "custom_id": "r-1",
        "response": {"status_code": 200, "request_id": "req_UPprovider", "body": BODY},
        "error": None,
    }
    out = rewrite(json.dumps(provider).encode() + b"\n")
    [line] = parsed(out)
    check_line(line, output=True)
    assert (line["id"], line["response"]["request_id"]) == line_ids(BATCH, FILE, 0)
    assert line["custom_id"] == "r-1"
    assert line["response"]["body"] == BODY and list(line["response"]["body"]) == list(BODY)
    assert b"UPprovider" not in out


def test_a_llama_stack_line_has_its_body_decoded_and_gets_an_error_field() -> None:
    provider = {
        "id": "batch_req_batch_UPx_1",
        "custom_id": "r-1",
        "response": {
            "status_code": 200,
            "request_id": "batch_req_batch_UPx_1",
            "body": json.dumps(BODY),
        },
    }
    [line] = parsed(rewrite(json.dumps(provider).encode()))  # no trailing newline
    check_line(line, output=True)
    assert line["response"]["body"] == BODY and list(line["response"]["body"]) == list(BODY)
    assert line["error"] is None


def test_bare_error_lines_become_openai_error_lines() -> None:
    error = {"type": "request_failed", "message": "boom"}
    bare = {"id": "batch_req_b_2", "custom_id": "r-2", "error": error}
    coded = {"id": "x", "custom_id": "r-3", "response": None}
    coded |= {"error": {"code": "batch_expired", "message": "late"}}
    lines = parsed(rewrite(jsonl([bare, coded])))
    for line in lines:
        check_line(line, output=False)
    assert lines[0]["error"] == {"code": "request_failed", "message": "boom"}
    assert lines[0]["custom_id"] == "r-2" and lines[0]["response"] is None
    assert lines[1]["error"] == {"code": "batch_expired", "message": "late"}


def test_a_non_2xx_response_keeps_its_error_envelope() -> None:
    envelope = {"error": {"message": "no", "type": "invalid_request_error", "param": None}}
    provider = {"id": "a", "custom_id": "c", "response": {"status_code": 400, "body": envelope}}
    [line] = parsed(rewrite(jsonl([provider])))
    check_line(line, output=False)
    assert line["response"]["body"] == envelope and line["response"]["status_code"] == 400


@pytest.mark.parametrize(
    "raw",
    [b"not json at all", b'{"custom_id": "half', b"[1, 2]", b'"a string"', b"\xff\xfe{}"],
)
def test_a_line_that_is_not_a_json_object_is_an_invalid_provider_line(raw: bytes) -> None:
    good = jsonl([{"custom_id": "ok", "response": {"status_code": 200, "body": {}}}])
    lines = parsed(rewrite(raw + b"\n" + good))
    check_line(lines[0], output=False)
    assert lines[0]["custom_id"] is None
    assert lines[0]["error"]["code"] == INVALID_LINE
    assert check_line(lines[1], output=True)["custom_id"] == "ok"


def test_a_line_with_neither_a_response_nor_an_error_keeps_its_custom_id() -> None:
    [line] = parsed(rewrite(b'{"custom_id": "c", "response": {"status_code": "x"}}\n'))
    check_line(line)
    assert line["custom_id"] == "c" and line["error"]["code"] == INVALID_LINE


def test_ids_are_stable_per_batch_file_and_line() -> None:
    data = chat_like_file(5)
    once = rewrite(data)
    assert rewrite(data) == once
    ids = [line["id"] for line in parsed(once)]
    assert len(set(ids)) == 5
    other_file = ResultLines(BATCH, "file-other000000000000000000")
    assert not set(ids) & {line["id"] for line in parsed(other_file.feed(data))}


def test_any_split_into_chunks_gives_the_same_bytes() -> None:
    data = b"\xef\xbb\xbf" + chat_like_file(6) + b"\r\n\n  \n" + b'{"custom_id": "tail"}'
    whole = rewrite(data)
    rng = random.Random(7)
    for _ in range(50):
        lines = ResultLines(BATCH, FILE)
        out, at = b"", 0
        while at < len(data):
            step = rng.choice([1, 2, 3, 17, 400])
            out += lines.feed(memoryview(data)[at : at + step])
            at += step
        assert out + lines.finish() == whole
    assert len(parsed(whole)) == 7  # blank lines dropped, the BOM and the last line kept
    for line in parsed(whole):
        check_line(line)


def test_a_line_over_the_limit_is_reported_and_the_rest_still_read() -> None:
    long = json.dumps({"custom_id": "big", "response": {"status_code": 200, "body": {}}})
    long = long.replace("{}", json.dumps({"x": "y" * 500}))
    data = chat_like_file(1) + long.encode() + b"\n" + chat_like_file(1)
    for step in (1, 7, 64, len(data)):
        lines = ResultLines(BATCH, FILE, max_line_bytes=300)
        out = b"".join(lines.feed(data[i : i + step]) for i in range(0, len(data), step))
        rows = parsed(out + lines.finish())
        assert [r["error"]["code"] if r["error"] else "ok" for r in rows] == [
            "ok",
            INVALID_LINE,
            "ok",
        ]
        assert [check_line(r)["custom_id"] for r in rows] == ["c0", None, "c0"]
    # Cut off at the end of the file too.
    assert parsed(rewrite(long.encode(), max_line_bytes=300))[0]["error"]["code"] == INVALID_LINE


def test_provider_ids_in_error_messages_become_gateway_ids() -> None:
    line = {
        "id": "batch_req_batch_UPsecret_3",
        "custom_id": "c",
        "error": {"type": "request_failed", "message": "batch_req_batch_UPsecret_3 failed"},
    }
    other = {"id": "q", "custom_id": "d", "error": {"code": "x", "message": "batch_UPsecret"}}
    out = rewrite(jsonl([line, other]), {"batch_UPsecret": BATCH})
    assert b"UPsecret" not in out
    first, second = parsed(out)
    assert first["error"]["message"] == f"{first['id']} failed"
    assert second["error"]["message"] == BATCH


def test_numbers_json_cannot_hold_in_64_bits_are_kept() -> None:
    big = 123456789012345678901234567890
    body = {"n": big, "m": -big, "u": 2**64 - 1, "f": 0.1}
    raw = json.dumps({"custom_id": "c", "response": {"status_code": 200, "body": body}})
    for sent in (
        raw,
        json.dumps({"custom_id": "c", "response": {"status_code": 200, "body": json.dumps(body)}}),
    ):
        [line] = parsed(rewrite(sent.encode()))
        assert line["response"]["body"] == body
    nan = b'{"custom_id": "c", "response": {"status_code": 200, "body": {"v": NaN}}}'
    body = parsed(rewrite(nan))[0]["response"]["body"]
    assert body["v"] is None or math.isnan(body["v"])


def test_normalize_line_never_raises_on_odd_values() -> None:
    line_id, request_id = line_ids(BATCH, FILE, 0)
    odd = [
        b'{"custom_id": 5, "response": {"status_code": true, "body": {}}}',
        b'{"custom_id": "c", "response": {"status_code": 200, "body": "not json"}}',
        b'{"custom_id": "c", "error": {"code": 7, "message": {"nested": 1}}}',
        b"[" * 5000 + b"]" * 5000,
        b'{"custom_id": "c\\ud800", "error": {"message": "\\udfff"}}',
        b"",
    ]
    for raw in odd:
        check_line(json.loads(normalize_line(raw, line_id, request_id)), any_body=True)


async def test_normalize_streams_chunk_by_chunk_in_bounded_memory() -> None:
    import tracemalloc

    assert inspect.isasyncgenfunction(normalize)
    total = 20 * 1024 * 1024
    fed = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal fed
        for chunk in provider_chunks(total):
            fed += len(chunk)
            yield chunk

    tracemalloc.start()
    try:
        out_bytes, lines = 0, 0
        async for out in normalize(chunks(), BATCH, FILE):
            out_bytes += len(out)
            lines += out.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fed >= total and lines > 1000 and out_bytes > total // 2
    assert peak < 8 * 1024 * 1024, peak  # a few chunks, never the file


def chat_like_file(n: int) -> bytes:
    rows = []
    for i in range(n):
        response = {"status_code": 200, "request_id": f"req_UP{i}", "body": BODY}
        rows.append({"id": f"batch_req_UP{i}", "custom_id": f"c{i}", "response": response})
    return jsonl(rows)


def provider_chunks(total: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """An OpenAI-like output file of `total` bytes, made as it is read."""
    template = json.dumps(
        {
            "id": "batch_req_UP%08d",
            "custom_id": "req-%08d",
            "response": {
                "status_code": 200,
                "request_id": "req_UP%08d",
                "body": {**BODY, "choices": [{"message": {"content": "x" * 1500}}]},
            },
            "error": None,
        }
    )
    buffer, sent, n = bytearray(), 0, 0
    while sent < total:
        while len(buffer) < chunk:
            buffer += (template.replace("%08d", f"{n:08d}") + "\n").encode()
            n += 1
        piece = bytes(buffer[:chunk])
        del buffer[:chunk]
        sent += len(piece)
        yield piece
    if buffer:
        yield bytes(buffer)


# Through the gateway, with the openai SDK.

Started = Callable[..., Awaitable[tuple[Gateway, FakeOpenAIState]]]
FAIL_LINE = chat_line(99, model="fail-model", custom_id="bad")


@pytest.fixture
def start_remote(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> Started:
    async def start(*, flavor: str, keep: bool = True) -> tuple[Gateway, FakeOpenAIState]:
        upstream = await aiohttp_server(make_openai_upstream(KEY, flavor=flavor))
        provider = {
            "type": "openai",
            "base_url": str(upstream.make_url("/v1")),
            "api_key": KEY,
            "retry_backoff_seconds": 0,
        }
        config = make_config(
            tmp_path,
            providers={"remote": provider},
            default="remote",
            blobs={"dir": "./files", "keep_provider_outputs": keep},
        )
        return await start_gateway(config), upstream.app[UPSTREAM]

    return start


def provider_ids(state: FakeOpenAIState) -> set[str]:
    """Every id the provider made: batches, files, and its result lines' ids."""
    found = set(state.files) | set(state.batches)
    for stored in state.files.values():
        for raw in stored["_content"].splitlines():
            line = json.loads(raw)
            response = line.get("response")
            if "id" in line:
                found.add(line["id"])
            if isinstance(response, dict) and response.get("request_id"):
                found.add(response["request_id"])
    return found


def upstream_bodies(state: FakeOpenAIState) -> dict[str, Any]:
    """The provider's result bodies by custom_id, decoded if it sent them as strings."""
    bodies = {}
    for stored in state.files.values():
        for raw in stored["_content"].splitlines():
            line = json.loads(raw)
            if isinstance(line.get("response"), dict):
                body = line["response"]["body"]
                bodies[line["custom_id"]] = json.loads(body) if isinstance(body, str) else body
    return bodies


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "relayed"])
@pytest.mark.parametrize("flavor", ["openai", "llama_stack"])
async def test_result_files_are_openai_lines_with_gateway_ids_only(
    start_remote: Started, flavor: str, keep: bool
) -> None:
    gw, state = await start_remote(flavor=flavor, keep=keep)
    batch = await create(gw, await upload(gw, chat_file(3) + jsonl([FAIL_LINE])))
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    files = {True: done.output_file_id, False: done.error_file_id}
    served: list[bytes] = []
    seen_ids: list[str] = []
    expected_bodies = upstream_bodies(state)
    for output, file_id in files.items():
        record = await kept(gw, file_id) if keep else None
        content = (await gw.client.files.content(file_id)).content
        assert (await gw.client.files.content(file_id)).content == content  # same bytes
        async with gw.http.get(gw.url(f"/v1/files/{file_id}/content")) as resp:
            assert await resp.read() == content
            if record is not None:  # the kept copy: its size is the rewritten size
                assert resp.headers["Content-Length"] == str(len(content)) == str(record.bytes)
                assert (await gw.client.files.retrieve(file_id)).bytes == len(content)
            else:  # relayed as it is rewritten: no length known up front
                assert resp.headers["Transfer-Encoding"] == "chunked"
        served.append(content)
        assert content.endswith(b"\n")
        lines = [check_line(json.loads(raw), output=output) for raw in content.splitlines()]
        seen_ids += [line["id"] for line in lines]
        if output:
            assert sorted(line["custom_id"] for line in lines) == ["req-0", "req-1", "req-2"]
            for line in lines:  # the model's body, as the provider answered it
                body = line["response"]["body"]
                assert body == expected_bodies[line["custom_id"]]
                assert list(body) == list(expected_bodies[line["custom_id"]])
        else:
            [line] = lines
            assert line["custom_id"] == "bad"
            if flavor == "llama_stack":
                assert line["response"] is None and line["error"]["code"] == "request_failed"
            else:
                assert line["response"]["status_code"] == 400 and line["error"] is None
    assert len(set(seen_ids)) == len(seen_ids) == 4

    [b async for b in gw.client.batches.list()]
    [f async for f in gw.client.files.list()]
    await gw.client.batches.retrieve(batch.id)
    seen = b"\n".join(gw.bodies + served)
    leaked = sorted(i for i in provider_ids(state) if i.encode() in seen)
    assert len(provider_ids(state)) >= 8 and not leaked


@pytest.mark.parametrize("flavor", ["openai", "llama_stack"])
async def test_an_empty_provider_file_gives_a_null_file_id(
    start_remote: Started, flavor: str
) -> None:
    gw, state = await start_remote(flavor=flavor)
    all_good = await wait_terminal(gw.client, (await create(gw, await upload(gw))).id)
    bad_file = jsonl([FAIL_LINE, chat_line(98, model="fail-model", custom_id="bad2")])
    all_bad = await wait_terminal(gw.client, (await create(gw, await upload(gw, bad_file))).id)
    assert all_good.status == all_bad.status == "completed"
    assert all_good.output_file_id and all_good.error_file_id is None
    assert all_bad.error_file_id and all_bad.output_file_id is None
    for listed in [b async for b in gw.client.batches.list()]:
        assert (listed.output_file_id is None) != (listed.error_file_id is None)

    upstream_files = {f for b in state.batches.values() for f in (b["output_file_id"],)}
    upstream_files |= {b["error_file_id"] for b in state.batches.values()}
    empty = [f for f in upstream_files if f and state.files[f]["bytes"] == 0]
    assert len(empty) == (2 if flavor == "llama_stack" else 0)
    store = gw.service.store
    for upstream_id in empty:  # no row was made for them
        assert await store.find_file_by_upstream("remote", upstream_id) is None
    files = [f async for f in gw.client.files.list(purpose="batch_output")]
    assert len(files) == 2 and all(f.bytes > 0 for f in files)


async def test_a_large_relayed_file_streams_in_bounded_memory(
    start_remote: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = await start_remote(flavor="openai", keep=False)
    done = await wait_terminal(gw.client, (await create(gw, await upload(gw))).id)
    assert done.output_file_id is not None
    total = 50 * 1024 * 1024

    @asynccontextmanager
    async def large(upstream_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in provider_chunks(total):
                yield chunk
                await asyncio.sleep(0)

        yield chunks()

    provider = gw.service.providers["remote"]
    monkeypatch.setattr(getattr(provider, "inner", provider), "open_file_content", large)

    peak = baseline = rss()
    received, lines = 0, 0
    first = b""
    async with gw.http.get(gw.url(f"/v1/files/{done.output_file_id}/content")) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            received += len(chunk)
            lines += chunk.count(b"\n")
            if not first and b"\n" in chunk:
                first = chunk[: chunk.find(b"\n")]
            peak = max(peak, rss())
    assert received > total // 2 and lines > 10_000
    check_line(json.loads(first), output=True)
    assert peak - baseline < 25 * 1024 * 1024, (peak - baseline) / 2**20


def rss() -> int:
    """This process's resident set size, in bytes (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
