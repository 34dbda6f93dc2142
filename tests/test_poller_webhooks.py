"""The background poller and terminal-status webhooks."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.auth import hash_key
from gateway.webhooks import SIGNATURE_HEADER, verify
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, make_openai_upstream
from tests.support import chat_file, make_config

Servers = Callable[..., Awaitable[TestServer]]
FAST_POLLER = {"interval_seconds": 0.05, "jitter": 0.2, "webhook_interval_seconds": 0.05}
SECRET = "whsec-test-123"
UPSTREAM_KEY = "sk-poller-upstream-key"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def statuses(gw: Gateway) -> dict[str, str]:
    page = await gw.service.store.list_batches("default", after=None, limit=100)
    return {r.id: r.status for r in page.data}


def remote(server: TestServer) -> dict[str, Any]:
    return {"type": "openai", "base_url": str(server.make_url("/v1")), "api_key": UPSTREAM_KEY}


async def create(gw: Gateway) -> str:
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
    batch = await gw.client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


async def test_poller_finishes_batches_without_any_client_retrieve(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    server = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    config = make_config(
        tmp_path, providers={"up": remote(server)}, default="up", poller=FAST_POLLER
    )
    gw = await start_gateway(config)
    ids = [await create(gw) for _ in range(4)]

    async def all_completed() -> bool:
        return set((await statuses(gw)).values()) == {"completed"}

    await eventually(all_completed)
    state = server.app[UPSTREAM]
    polls = [r for r in state.requests if r[0] == "GET" and r[1].startswith("/v1/batches/")]
    assert len(polls) == 4 * 3  # validating -> in_progress -> finalizing -> completed
    await asyncio.sleep(0.3)  # several more sweeps: terminal batches are never polled again
    assert len([r for r in state.requests if r[1].startswith("/v1/batches/")]) == len(polls)
    listed = [b async for b in gw.client.batches.list()]
    assert {b.id for b in listed} == set(ids) and all(b.output_file_id for b in listed)


async def test_a_slow_provider_does_not_hold_up_the_others(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    slow = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    fast = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    config = make_config(
        tmp_path,
        providers={"slow": remote(slow), "fast": remote(fast)},
        routes=[{"match": {"metadata": {"lane": "slow"}}, "to": "slow"}],
        default="fast",
        poller=FAST_POLLER,
    )
    gw = await start_gateway(config)
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch")
    slow_batch = await gw.client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"lane": "slow"},
    )
    slow.app[UPSTREAM].latency = 5.0  # every poll of the slow provider now takes 5 s
    fast_batch = await create(gw)

    async def fast_done() -> bool:
        return (await statuses(gw))[fast_batch] == "completed"

    await eventually(fast_done, timeout=2.0)
    assert (await statuses(gw))[slow_batch.id] == "validating"


async def test_webhook_is_delivered_once_per_terminal_transition(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    received: list[tuple[bytes, str]] = []

    async def receiver(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers[SIGNATURE_HEADER]))
        return web.Response(status=500 if len(received) == 1 else 204)

    app = web.Application()
    app.router.add_post("/hook", receiver)
    hook = await aiohttp_server(app)
    config = make_config(
        tmp_path,
        webhooks={"ops": {"url": str(hook.make_url("/hook")), "secret": SECRET}},
        routes=[{"to": "sandbox", "webhook": "ops"}],
        poller=FAST_POLLER | {"webhook_interval_seconds": 0.02},
    )
    config = config.model_copy(
        update={
            "webhooks": {
                "ops": config.webhooks["ops"].model_copy(update={"retry_backoff_seconds": 0.05})
            }
        }
    )
    gw = await start_gateway(config)
    batch_id = await create(gw)

    async def delivered() -> bool:
        return len(received) >= 2

    await eventually(delivered)
    await asyncio.sleep(0.3)  # further sweeps and deliveries must not send it again
    assert len(received) == 2  # the failed first attempt, then the one delivery
    (body1, sig1), (body2, sig2) = received
    assert body1 == body2  # the same event (same id), retried
    assert verify(SECRET, sig2, body2) and not verify("wrong", sig2, body2)
    event = orjson.loads(body2)
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch_id and event["data"]["status"] == "completed"
    assert event["id"].startswith("evt_")


async def test_a_view_older_than_the_end_does_not_tell_the_webhook_twice(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    # Two writers (a client's retrieve and the poller, or two replicas) can both see a
    # batch end; only the first write of the end counts and queues the webhook.
    received: list[bytes] = []

    async def receiver(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receiver)
    hook = await aiohttp_server(app)
    server = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    config = make_config(
        tmp_path,
        providers={"up": remote(server)},
        webhooks={"ops": {"url": str(hook.make_url("/hook")), "secret": SECRET}},
        default="up",
        routes=[{"to": "up", "webhook": "ops"}],
        poller=FAST_POLLER,
    )
    gw = await start_gateway(config)
    batch_id = await create(gw)
    older = await gw.service.store.get_batch(batch_id)
    assert older is not None and older.status == "validating"

    async def one_delivery() -> bool:
        return len(received) == 1

    await eventually(one_delivery)
    view = await gw.service.refresh(older)  # the provider says "completed" to it as well
    assert view.object["status"] == "completed" and view.object == older.object
    await asyncio.sleep(0.3)  # webhook sweeps run every 0.05 s
    assert len(received) == 1
    assert orjson.loads(received[0])["data"]["id"] == batch_id
    stored = await gw.service.store.get_batch(batch_id)
    assert stored is not None and stored.object == view.object


async def test_a_keys_webhook_is_told_when_its_batches_end(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    received: list[bytes] = []

    async def receiver(request: web.Request) -> web.Response:
        assert verify(SECRET, request.headers[SIGNATURE_HEADER], await request.read())
        received.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receiver)
    hook = await aiohttp_server(app)
    keys = [
        {"name": "team", "key_sha256": hash_key("k-team-with-hook"), "webhook": "team-hook"},
        {"name": "quiet", "key_sha256": hash_key("k-team-without-hook")},
    ]
    config = make_config(
        tmp_path,
        auth={"keys": keys},
        webhooks={"team-hook": {"url": str(hook.make_url("/hook")), "secret": SECRET}},
        poller=FAST_POLLER | {"webhook_interval_seconds": 0.02},
    )
    team = await start_gateway(config, api_key="k-team-with-hook")
    quiet = await start_gateway(config, api_key="k-team-without-hook")
    team_batch = await create(team)
    await create(quiet)

    async def delivered() -> bool:
        return len(received) >= 1

    await eventually(delivered)
    await asyncio.sleep(0.3)
    assert [orjson.loads(body)["data"]["id"] for body in received] == [team_batch]
