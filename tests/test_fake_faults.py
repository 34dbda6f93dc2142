"""The fake upstreams' fault modes and busy-account traffic behave as documented.

These are the building blocks for proving the gateway never makes a duplicate or orphaned
upstream batch, so each test checks *when* the upstream batch exists relative to the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.fakes.anthropic_upstream import ANTHROPIC, FakeAnthropicState, make_anthropic_upstream
from tests.fakes.faults import FOREIGN_TAG_PREFIX, GATEWAY_TAG
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.test_fake_upstream import AUTH, KEY, _jsonl, _upload

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
CREATE = "POST /v1/batches"
ANT_KEY = "sk-ant-fake-faults"
ANT_HEADERS = {"x-api-key": ANT_KEY, "anthropic-version": "2023-06-01"}
ANT_CREATE = "POST /v1/messages/batches"


async def _openai(
    aiohttp_client: ClientFactory, **options: Any
) -> tuple[Client, FakeOpenAIState, dict[str, Any]]:
    """A client on a fake with `fail_on` the create, and a valid create body."""
    client = await aiohttp_client(make_openai_upstream(KEY, fail_on=CREATE, **options))
    file_id = (await _upload(client, _jsonl("m")))["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    body |= {"completion_window": "24h", "metadata": {GATEWAY_TAG: "batch_ours"}}
    return client, client.app[UPSTREAM], body


async def _anthropic(
    aiohttp_client: ClientFactory, **options: Any
) -> tuple[Client, FakeAnthropicState]:
    client = await aiohttp_client(make_anthropic_upstream(ANT_KEY, fail_on=ANT_CREATE, **options))
    return client, client.app[ANTHROPIC]


def _ant_body(custom_id: str = "r-0") -> dict[str, Any]:
    params = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "?"}]}
    return {"requests": [{"custom_id": custom_id, "params": params}]}


async def test_error_after_creates_the_batch_then_answers_500(
    aiohttp_client: ClientFactory,
) -> None:
    client, state, body = await _openai(aiohttp_client, fail_next=["error_after"])
    resp = await client.post("/v1/batches", json=body, headers=AUTH)
    assert resp.status == 500
    assert (await resp.json())["error"]["type"] == "server_error"
    (batch,) = state.batches.values()
    assert batch["metadata"] == {GATEWAY_TAG: "batch_ours"}
    assert state.fault_log == [("error_after", CREATE)]


async def test_slow_after_creates_the_batch_before_the_answer_arrives(
    aiohttp_client: ClientFactory,
) -> None:
    client, state, body = await _openai(
        aiohttp_client, fail_next=["slow_after"], slow_answer_seconds=0.3
    )
    started = time.monotonic()
    answer = asyncio.create_task(client.post("/v1/batches", json=body, headers=AUTH))
    while not state.batches:
        await asyncio.sleep(0.01)
    assert not answer.done()  # the batch exists, the client is still waiting
    resp = await answer
    assert resp.status == 200 and time.monotonic() - started >= 0.3
    assert (await resp.json())["id"] in state.batches


async def test_slow_after_outlasts_a_client_read_timeout(aiohttp_client: ClientFactory) -> None:
    client, state, body = await _openai(
        aiohttp_client, fail_next=["slow_after"], slow_answer_seconds=0.5
    )
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            "/v1/batches", json=body, headers=AUTH, timeout=aiohttp.ClientTimeout(total=0.2)
        )
    assert len(state.batches) == 1  # made, though the client never heard of it


async def test_deferred_error_answers_500_at_once_and_creates_later(
    aiohttp_client: ClientFactory,
) -> None:
    client, state, body = await _openai(
        aiohttp_client, fail_next=["deferred_error"], defer_seconds=0.3
    )
    started = time.monotonic()
    resp = await client.post("/v1/batches", json=body, headers=AUTH)
    assert resp.status == 500 and time.monotonic() - started < 0.3
    assert (await resp.json())["error"]["type"] == "server_error"
    assert state.batches == {}
    await asyncio.sleep(0.4)
    (batch,) = state.batches.values()
    assert batch["metadata"] == {GATEWAY_TAG: "batch_ours"}  # the same body, replayed
    assert batch["input_file_id"] == body["input_file_id"]
    assert state.fault_log == [("deferred_error", CREATE)]


async def test_deferred_hang_creates_after_the_client_gave_up(
    aiohttp_client: ClientFactory,
) -> None:
    client, state, body = await _openai(
        aiohttp_client, fail_next=["deferred_hang"], defer_seconds=0.3
    )
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            "/v1/batches", json=body, headers=AUTH, timeout=aiohttp.ClientTimeout(total=0.1)
        )
    assert state.batches == {}  # the connection is gone, nothing made yet
    await asyncio.sleep(0.35)
    (batch,) = state.batches.values()
    assert batch["metadata"] == {GATEWAY_TAG: "batch_ours"}


async def test_deferred_replay_of_an_invalid_body_makes_nothing(
    aiohttp_client: ClientFactory,
) -> None:
    client, state, body = await _openai(
        aiohttp_client, fail_next=["deferred_error"], defer_seconds=0.05
    )
    bad = body | {"metadata": {f"k{i}": "v" for i in range(17)}}
    assert (await client.post("/v1/batches", json=bad, headers=AUTH)).status == 500
    await asyncio.sleep(0.1)
    assert state.batches == {}


async def test_pending_deferred_work_is_cancelled_at_shutdown(
    aiohttp_server: ServerFactory,
) -> None:
    server = await aiohttp_server(
        make_openai_upstream(KEY, fail_on=CREATE, fail_next=["deferred_error"], defer_seconds=5)
    )
    state = server.app[UPSTREAM]
    async with aiohttp.ClientSession(headers=AUTH) as http:
        form = aiohttp.FormData({"purpose": "batch"})
        form.add_field("file", _jsonl("m"), filename="in.jsonl")
        async with http.post(server.make_url("/v1/files"), data=form) as resp:
            file_id = (await resp.json())["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        async with http.post(server.make_url("/v1/batches"), json=body) as resp:
            assert resp.status == 500
    await server.close()
    assert state._tasks == set() and state.batches == {}


async def test_fault_rates_with_a_seed_inject_their_share_and_log_it(
    aiohttp_client: ClientFactory,
) -> None:
    rates = {"500": 0.2, "error_after": 0.1}
    client, state, body = await _openai(aiohttp_client, fault_rates=rates, fault_seed=7)
    statuses: Counter[int] = Counter()
    for _ in range(300):
        statuses[(await client.post("/v1/batches", json=body, headers=AUTH)).status] += 1
        assert (await client.get("/v1/batches", headers=AUTH)).status == 200  # not fail_on
    kinds = Counter(kind for kind, _ in state.fault_log)
    assert {where for _, where in state.fault_log} == {CREATE}
    assert 30 <= kinds["500"] <= 90 and 10 <= kinds["error_after"] <= 50  # ~60 and ~30
    assert statuses[500] == kinds["500"] + kinds["error_after"]
    assert len(state.batches) == 300 - kinds["500"]  # error_after made its batch

    again, again_state, again_body = await _openai(aiohttp_client, fault_rates=rates, fault_seed=7)
    for _ in range(300):
        await again.post("/v1/batches", json=again_body, headers=AUTH)
    assert again_state.fault_log == state.fault_log  # the seed makes it repeatable


async def test_anthropic_error_after_and_statuses_use_its_envelope(
    aiohttp_client: ClientFactory,
) -> None:
    client, state = await _anthropic(aiohttp_client, fail_next=["error_after", 529])
    resp = await client.post("/v1/messages/batches", json=_ant_body(), headers=ANT_HEADERS)
    assert resp.status == 500
    answer = await resp.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "api_error"
    assert len(state.batches) == 1
    resp = await client.post("/v1/messages/batches", json=_ant_body(), headers=ANT_HEADERS)
    assert resp.status == 529 and (await resp.json())["error"]["type"] == "overloaded_error"
    assert len(state.batches) == 1
    assert state.fault_log == [("error_after", ANT_CREATE), ("529", ANT_CREATE)]


async def test_anthropic_deferred_error_creates_later(aiohttp_client: ClientFactory) -> None:
    client, state = await _anthropic(
        aiohttp_client, fail_next=["deferred_error"], defer_seconds=0.2
    )
    resp = await client.post("/v1/messages/batches", json=_ant_body("late"), headers=ANT_HEADERS)
    assert resp.status == 500 and (await resp.json())["error"]["type"] == "api_error"
    assert state.batches == {}
    await asyncio.sleep(0.3)
    (batch,) = state.batches.values()
    assert batch["_requests"][0]["custom_id"] == "late"


async def test_anthropic_list_pages_both_ways(aiohttp_client: ClientFactory) -> None:
    client, state = await _anthropic(aiohttp_client, preload_batches=5)
    made = list(state.batches)  # oldest first

    async def page(query: str) -> dict[str, Any]:
        resp = await client.get(f"/v1/messages/batches?{query}", headers=ANT_HEADERS)
        assert resp.status == 200
        return await resp.json()

    first = await page("limit=2")
    assert [b["id"] for b in first["data"]] == made[::-1][:2] and first["has_more"] is True
    assert (first["first_id"], first["last_id"]) == (made[4], made[3])
    second = await page(f"limit=2&after_id={first['last_id']}")
    assert [b["id"] for b in second["data"]] == [made[2], made[1]] and second["has_more"]
    third = await page(f"limit=2&after_id={second['last_id']}")
    assert [b["id"] for b in third["data"]] == [made[0]] and third["has_more"] is False
    back = await page(f"limit=2&before_id={third['first_id']}")
    assert [b["id"] for b in back["data"]] == [made[2], made[1]] and back["has_more"] is True
    assert (await page(""))["data"][0]["type"] == "message_batch"
    for bad in ("limit=0", "limit=1001", f"before_id={made[0]}&after_id={made[1]}"):
        resp = await client.get(f"/v1/messages/batches?{bad}", headers=ANT_HEADERS)
        assert resp.status == 400, bad


async def test_busy_account_preload_lists_fast_in_pages(aiohttp_client: ClientFactory) -> None:
    before = time.time()
    client = await aiohttp_client(make_openai_upstream(KEY, preload_batches=3000))
    state = client.app[UPSTREAM]
    assert len(state.batches) == 3000 and len(state.files) == 3000
    now, seen, after = time.time(), [], ""
    started = time.monotonic()
    while True:
        resp = await client.get(f"/v1/batches?limit=100{after}", headers=AUTH)
        page = await resp.json()
        seen += page["data"]
        if not page["has_more"]:
            break
        after = f"&after={page['last_id']}"
    assert time.monotonic() - started < 5  # 30 pages; each costs its page, not the account
    assert len({b["id"] for b in seen}) == 3000
    created = [b["created_at"] for b in seen]
    assert created == sorted(created, reverse=True)  # newest first
    assert before - 3600 - 1 <= created[-1] and created[0] <= now  # the previous hour
    assert created[0] - created[-1] >= 3500  # spread over it, not bunched
    assert all(b["input_file_id"] in state.files for b in seen)
    tags = [b["metadata"][GATEWAY_TAG] for b in seen if b["metadata"]]
    assert len(tags) == 3 and all(t.startswith(FOREIGN_TAG_PREFIX) for t in tags)


async def test_busy_account_background_creates_stop_at_shutdown(
    aiohttp_server: ServerFactory,
) -> None:
    server = await aiohttp_server(make_openai_upstream(KEY, background_creates_per_second=50))
    state = server.app[UPSTREAM]
    await asyncio.sleep(0.3)
    assert len(state.batches) >= 5
    assert all(b["input_file_id"] in state.files for b in state.batches.values())
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(server.make_url("/v1/batches?limit=1")) as resp:
            newest = (await resp.json())["data"][0]
    # The newest listed is the last made before the answer; creates go on meanwhile.
    made = list(state.batches)
    later = made[made.index(newest["id"]) + 1 :]
    assert all(state.batches[b]["created_at"] >= newest["created_at"] for b in later)
    assert len(later) <= 5
    await server.close()
    stopped = len(state.batches)
    await asyncio.sleep(0.1)
    assert len(state.batches) == stopped and state._tasks == set()


async def test_anthropic_busy_account(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(
        make_anthropic_upstream(ANT_KEY, preload_batches=250, background_creates_per_second=50)
    )
    state = server.app[ANTHROPIC]
    assert len(state.batches) >= 250
    await asyncio.sleep(0.2)
    assert len(state.batches) > 250
    await server.close()
    assert state._tasks == set()
