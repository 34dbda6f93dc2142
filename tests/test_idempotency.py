"""Idempotency-Key on POST /v1/batches and POST /v1/files: one piece of work per key.

Through the real gateway and the openai SDK (SQLite file store), and the store
methods against SQLite and a real PostgreSQL server alike.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai._legacy_response import LegacyAPIResponse
from openai.types import Batch, FileObject

from gateway import idempotency
from gateway.auth import hash_key
from gateway.errors import UpstreamError
from gateway.store import Store
from gateway.store.idempotency import IdempotencyRecord
from gateway.store.postgres import PostgresStore
from gateway.store.sql import SQLStore
from gateway.store.sqlite import SQLiteStore
from tests.conftest import Gateway, StartGateway
from tests.support import chat_file, make_config

KEY = "Idempotency-Key"
CHAT = "/v1/chat/completions"


def keyed(key: str) -> dict[str, str]:
    return {KEY: key}


async def upload(
    client: openai.AsyncOpenAI, content: bytes | None = None, *, key: str | None = None
) -> FileObject:
    return await client.files.create(
        file=("in.jsonl", io.BytesIO(content or chat_file(2))),
        purpose="batch",
        extra_headers=keyed(key) if key else None,
    )


async def create(
    client: openai.AsyncOpenAI, file_id: str, key: str, **kwargs: Any
) -> LegacyAPIResponse[Batch]:
    """The raw answer, so tests can compare the bytes on the wire."""
    return await client.batches.with_raw_response.create(
        input_file_id=file_id,
        endpoint=CHAT,
        completion_window="24h",
        extra_headers=keyed(key),
        **kwargs,
    )


async def batch_ids(client: openai.AsyncOpenAI) -> list[str]:
    return [b.id async for b in client.batches.list()]


async def file_ids(client: openai.AsyncOpenAI) -> list[str]:
    return [f.id async for f in client.files.list()]


def blobs(tmp_path: Path) -> list[str]:
    """Stored blobs, and any partial upload left in tmp/."""
    folder = tmp_path / "files"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) + [
        f"tmp/{p.name}" for p in (folder / "tmp").iterdir()
    ]


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = json.loads(exc.response.content)
    assert set(body) == {"error"}
    return dict(body["error"])


# creates


async def test_a_replayed_create_answers_the_same_bytes_and_makes_one_batch(
    gateway: Gateway,
) -> None:
    f = await upload(gateway.client)
    first = await create(gateway.client, f.id, "create-1", metadata={"job": "nightly"})
    again = await create(gateway.client, f.id, "create-1", metadata={"job": "nightly"})
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert first.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    batch = first.parse()
    assert await batch_ids(gateway.client) == [batch.id]
    page = await gateway.service.store.list_batches("default", after=None, limit=10)
    assert [r.id for r in page.data] == [batch.id]


async def test_a_different_request_under_the_same_key_is_refused(gateway: Gateway) -> None:
    f = await upload(gateway.client)
    first = (await create(gateway.client, f.id, "k", metadata={"n": "1"})).parse()
    for kwargs, headers in (
        ({"metadata": {"n": "2"}}, {}),
        ({"metadata": {"n": "1"}}, {"X-Batch-Provider": "sandbox"}),  # it can route the batch
    ):
        with pytest.raises(openai.BadRequestError) as info:
            await gateway.client.batches.create(
                input_file_id=f.id,
                endpoint=CHAT,
                completion_window="24h",
                extra_headers={**keyed("k"), **headers},
                **kwargs,
            )
        error = error_of(info.value)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "idempotency_key_reused"
        assert error["param"] is None
        assert "different request" in error["message"]
    assert await batch_ids(gateway.client) == [first.id]


async def test_body_key_order_and_spacing_do_not_change_the_request(gateway: Gateway) -> None:
    f = await upload(gateway.client)
    bodies = [
        {"input_file_id": f.id, "endpoint": CHAT, "completion_window": "24h"},
        {"completion_window": "24h", "endpoint": CHAT, "input_file_id": f.id},
    ]
    answers = []
    for i, body in enumerate(bodies):
        data = json.dumps(body, indent=i or None).encode()
        async with gateway.http.post(
            gateway.url("/v1/batches"),
            data=data,
            headers={**keyed("same"), "Content-Type": "application/json"},
        ) as resp:
            answers.append((resp.status, await resp.read()))
    assert answers[0] == answers[1] and answers[0][0] == 200
    assert len(await batch_ids(gateway.client)) == 1


async def test_a_stored_4xx_is_answered_again_byte_for_byte(gateway: Gateway) -> None:
    body = {"input_file_id": "file-doesnotexist", "endpoint": CHAT, "completion_window": "24h"}
    answers = []
    for _ in range(2):
        async with gateway.http.post(
            gateway.url("/v1/batches"), json=body, headers=keyed("missing-file")
        ) as resp:
            answers.append(
                (resp.status, await resp.read(), resp.headers.get("Idempotent-Replayed"))
            )
    assert answers[0][:2] == answers[1][:2]
    assert answers[0][0] == 404
    assert (answers[0][2], answers[1][2]) == (None, "true")


async def test_another_tenant_with_the_same_key_gets_its_own_batch(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    keys = {"team-a": "key-for-team-a-123", "team-b": "key-for-team-b-456"}
    auth = {"keys": [{"name": n, "key_sha256": hash_key(k)} for n, k in keys.items()]}
    gw = await start_gateway(make_config(tmp_path, auth=auth), api_key=keys["team-a"])
    made = {}
    for name, api_key in keys.items():
        client = gw.client.with_options(api_key=api_key)
        f = await upload(client)
        made[name] = ((await create(client, f.id, "shared")).parse().id, client)
    (a, client_a), (b, client_b) = made["team-a"], made["team-b"]
    assert a != b
    assert await batch_ids(client_a) == [a]
    assert await batch_ids(client_b) == [b]


async def test_a_concurrent_retry_gets_409_and_the_answer_once_the_first_ends(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = await upload(gateway.client)
    real = gateway.service.create_batch
    entered, go = asyncio.Event(), asyncio.Event()
    calls = 0

    async def held(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        entered.set()
        await go.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(gateway.service, "create_batch", held)
    first = asyncio.create_task(create(gateway.client, f.id, "busy"))
    await asyncio.wait_for(entered.wait(), 5)
    with pytest.raises(openai.ConflictError) as info:
        await asyncio.wait_for(create(gateway.client, f.id, "busy"), 5)
    error = error_of(info.value)
    assert (error["code"], error["param"]) == ("idempotency_key_in_use", None)
    # It ends by itself: retryable, unlike the 409 of a file in use.
    assert info.value.response.headers["x-should-retry"] == "true"
    assert info.value.response.headers["Retry-After"] == "1"
    go.set()
    answer = await asyncio.wait_for(first, 5)
    replay = await create(gateway.client, f.id, "busy")
    assert replay.content == answer.content
    assert calls == 1
    assert await batch_ids(gateway.client) == [answer.parse().id]


async def test_a_request_outliving_its_lock_keeps_the_key_by_renewing_it(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "LOCK_SECONDS", 0.2)
    monkeypatch.setattr(idempotency, "RENEW_SECONDS", 0.05)
    f = await upload(gateway.client)
    real = gateway.service.create_batch
    entered, go = asyncio.Event(), asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> dict[str, Any]:
        entered.set()
        await go.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(gateway.service, "create_batch", slow)
    first = asyncio.create_task(create(gateway.client, f.id, "long"))
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.sleep(0.5)  # over twice the lock: only renewals keep it
    with pytest.raises(openai.ConflictError):
        await asyncio.wait_for(create(gateway.client, f.id, "long"), 5)
    go.set()
    answer = await asyncio.wait_for(first, 5)
    assert (await create(gateway.client, f.id, "long")).content == answer.content
    assert await batch_ids(gateway.client) == [answer.parse().id]


async def test_a_5xx_or_a_crash_is_not_stored_and_a_retry_runs_again(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = await upload(gateway.client)
    real = gateway.service.create_batch
    failures: list[Exception] = [
        UpstreamError("The upstream provider is unavailable.", code="upstream_unavailable"),
        RuntimeError("a bug"),
    ]
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return await real(*args, **kwargs)

    monkeypatch.setattr(gateway.service, "create_batch", flaky)
    with pytest.raises(openai.InternalServerError) as info:
        await create(gateway.client, f.id, "retry-me")
    assert info.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as info:
        await create(gateway.client, f.id, "retry-me")
    assert info.value.status_code == 500
    made = await create(gateway.client, f.id, "retry-me")
    replay = await create(gateway.client, f.id, "retry-me")
    assert made.status_code == 200 and replay.content == made.content
    assert calls == 3
    assert await batch_ids(gateway.client) == [made.parse().id]


# uploads


async def test_a_replayed_upload_answers_the_same_file_and_stores_one(
    gateway: Gateway, tmp_path: Path
) -> None:
    async def raw_upload() -> Any:
        return await gateway.client.files.with_raw_response.create(
            file=("in.jsonl", io.BytesIO(chat_file(3))),
            purpose="batch",
            extra_headers=keyed("upload-1"),
        )

    first, again = await raw_upload(), await raw_upload()
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["Idempotent-Replayed"] == "true"
    file = first.parse()
    assert again.parse() == file
    assert await file_ids(gateway.client) == [file.id]
    assert blobs(tmp_path) == [file.id]


async def test_a_different_upload_under_the_same_key_stores_nothing(
    gateway: Gateway, tmp_path: Path
) -> None:
    file = await upload(gateway.client, chat_file(2), key="up")
    for content, name in ((chat_file(3), "in.jsonl"), (chat_file(2), "other.jsonl")):
        with pytest.raises(openai.BadRequestError) as info:
            await gateway.client.files.create(
                file=(name, io.BytesIO(content)), purpose="batch", extra_headers=keyed("up")
            )
        assert error_of(info.value)["code"] == "idempotency_key_reused"
    assert await file_ids(gateway.client) == [file.id]
    assert blobs(tmp_path) == [file.id]


async def test_a_key_is_bound_to_the_endpoint_it_was_first_used_on(gateway: Gateway) -> None:
    file = await upload(gateway.client, key="one-use")
    with pytest.raises(openai.BadRequestError) as info:
        await create(gateway.client, file.id, "one-use")
    error = error_of(info.value)
    assert (error["code"], error["param"]) == ("idempotency_key_reused", None)
    assert "POST /v1/files" in error["message"]
    assert await batch_ids(gateway.client) == []


async def test_an_upload_refused_after_the_form_was_read_is_replayed(
    gateway: Gateway, tmp_path: Path
) -> None:
    # purpose after the file: the form is read whole, the file stored, then refused.
    answers = []
    for _ in range(2):
        form = aiohttp_form(chat_file(2), purpose="assistants")
        async with gateway.http.post(
            gateway.url("/v1/files"), data=form, headers=keyed("bad-purpose")
        ) as resp:
            answers.append((resp.status, await resp.read()))
    assert answers[0] == answers[1] and answers[0][0] == 400
    assert await file_ids(gateway.client) == []
    assert blobs(tmp_path) == []


def aiohttp_form(content: bytes, *, purpose: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", content, filename="in.jsonl")
    form.add_field("purpose", purpose)
    return form


# the header


@pytest.mark.parametrize("value", ["", "   ", "k" * 256, "tab\there"])
async def test_an_unusable_header_is_refused(gateway: Gateway, value: str) -> None:
    body = {"input_file_id": "file-x", "endpoint": CHAT, "completion_window": "24h"}
    async with gateway.http.post(gateway.url("/v1/batches"), json=body, headers={KEY: value}) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", None)
    assert error["code"] == "invalid_idempotency_key"
    assert KEY in error["message"]


async def test_a_255_character_key_works_and_a_longer_one_is_refused_by_the_sdk_call(
    gateway: Gateway,
) -> None:
    file = await upload(gateway.client, key="u" * 255)
    with pytest.raises(openai.BadRequestError) as info:
        await upload(gateway.client, key="u" * 256)
    assert "at most 255" in error_of(info.value)["message"]
    assert await file_ids(gateway.client) == [file.id]


# the store, on both backends


async def open_sql(url: str) -> SQLStore:
    """A second, independent store (own connections) on the same database."""
    if url.startswith("sqlite:///"):
        return await SQLiteStore.open(url.removeprefix("sqlite:///"))
    return await PostgresStore.open(url)


OP = idempotency.CREATE_BATCH
NOW = 1_700_000_000.0


async def test_a_key_is_held_then_answered_per_tenant(store: Store) -> None:
    assert await store.claim_idempotency_key("a", "k", OP, "one", NOW, 60) is None
    held = await store.claim_idempotency_key("a", "k", OP, "two", NOW + 1, 60)
    assert held is not None and not held.answered and held.locked_until == NOW + 60
    assert await store.claim_idempotency_key("b", "k", OP, "two", NOW, 60) is None
    assert await store.renew_idempotency_key("a", "k", "one", NOW + 120)
    assert not await store.renew_idempotency_key("a", "k", "two", NOW + 120)
    answer = b'{"id": "batch_1"}'
    assert await store.finish_idempotency_key(
        "a", "k", "one", fingerprint="fp", status=200, body=answer, now=NOW + 2
    )
    expected = IdempotencyRecord(OP, "fp", 200, answer, None)
    assert await store.claim_idempotency_key("a", "k", OP, "three", NOW + 3, 60) == expected
    await store.release_idempotency_key("a", "k", "one")  # answered: stays
    assert await store.claim_idempotency_key("a", "k", OP, "three", NOW + 4, 60) == expected
    await store.release_idempotency_key("b", "k", "two")  # b's 5xx: free again
    assert await store.claim_idempotency_key("b", "k", OP, "four", NOW + 5, 60) is None


async def test_the_lock_of_a_dead_request_runs_out(store: Store) -> None:
    assert await store.claim_idempotency_key("a", "k", OP, "dead", NOW, 60) is None
    assert await store.claim_idempotency_key("a", "k", OP, "next", NOW + 59, 60) is not None
    assert await store.claim_idempotency_key("a", "k", OP, "next", NOW + 60, 60) is None
    # The first owner, had it only stalled, can neither renew nor store over the taker.
    assert not await store.renew_idempotency_key("a", "k", "dead", NOW + 200)
    assert not await store.finish_idempotency_key(
        "a", "k", "dead", fingerprint="x", status=200, body=b"{}", now=NOW + 61
    )
    assert await store.finish_idempotency_key(
        "a", "k", "next", fingerprint="y", status=201, body=b"[]", now=NOW + 61
    )
    found = await store.claim_idempotency_key("a", "k", OP, "late", NOW + 10_000, 60)
    assert found == IdempotencyRecord(OP, "y", 201, b"[]", None)


async def test_claims_at_once_from_two_stores_have_one_winner(store: Store, store_url: str) -> None:
    other = await open_sql(store_url)
    try:
        results = await asyncio.gather(
            *(
                (store if i % 2 else other).claim_idempotency_key(
                    "a", "race", OP, f"owner-{i}", NOW, 60
                )
                for i in range(20)
            )
        )
    finally:
        await other.close()
    assert sum(r is None for r in results) == 1
    assert all(r is None or not r.answered for r in results)


async def test_prune_drops_keys_older_than_a_day_and_keeps_newer(store: Store) -> None:
    now = time.time()
    day = idempotency.KEEP_SECONDS
    for key, at in (("old", now - day - 60), ("new", now - day + 60)):
        assert await store.claim_idempotency_key("a", key, OP, "o", at, 60) is None
        assert await store.finish_idempotency_key(
            "a", key, "o", fingerprint="f", status=200, body=b"{}", now=at
        )
    assert await store.claim_idempotency_key("a", "running", OP, "o", now, 60) is None
    assert await store.prune_idempotency_keys(now - day) == 1
    assert await store.claim_idempotency_key("a", "old", OP, "p", now, 60) is None  # free again
    kept = await store.claim_idempotency_key("a", "new", OP, "p", now, 60)
    assert kept is not None and kept.answered
    running = await store.claim_idempotency_key("a", "running", OP, "p", now, 60)
    assert running is not None and not running.answered
