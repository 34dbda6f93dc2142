"""The admin API: every tenant's batches with history and attempts, refresh, providers."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.auth import hash_key
from gateway.config import SHARDED
from gateway.store import BatchRecord, Store
from gateway.store.base import AdminFilter, BatchEvent
from providers.base import TERMINAL_STATUSES
from providers.resilience import CallWindow
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, make_openai_upstream
from tests.support import chat_file, make_config

ADMIN = "admin-key-for-tests"
KEYS = {"alpha": "alpha-key-for-tests", "beta": "beta-key-for-tests", "default": "any"}
UPSTREAM_KEY = "sk-up-admin-api-key"
Servers = Callable[..., Awaitable[TestServer]]


def sandbox(folder: str, **options: Any) -> dict[str, Any]:
    base = {"type": "sandbox", "dir": folder, "line_seconds": 0, "finalize_seconds": 0}
    return base | {"validate_seconds": 0, "cancel_seconds": 0} | options


def auth() -> dict[str, Any]:
    return {
        "admin_key_sha256": hash_key(ADMIN),
        "keys": [{"name": name, "key_sha256": hash_key(KEYS[name])} for name in ("alpha", "beta")],
    }


async def start(start_gateway: StartGateway, tmp_path: Path, **overrides: Any) -> Gateway:
    overrides.setdefault("providers", {"sandbox": sandbox("./sandbox")})
    overrides.setdefault("poller", {"enabled": False})
    config = make_config(tmp_path, auth=auth(), **overrides)
    return await start_gateway(config, api_key=KEYS["alpha"])


async def create(
    gw: Gateway, tenant: str = "alpha", lines: int = 2, metadata: dict[str, str] | None = None
) -> Any:
    """Upload and create a batch as `tenant` (open auth: the gateway's own client)."""
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEYS[tenant], max_retries=0) as sdk:
        f = await sdk.files.create(file=("in.jsonl", io.BytesIO(chat_file(lines))), purpose="batch")
        return await sdk.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=metadata,
        )


async def call(
    gw: Gateway, method: str, path: str, *, key: str = ADMIN, expect: int = 200, **params: Any
) -> Any:
    async with gw.http.request(
        method,
        gw.url(f"/v1/gateway/admin/{path}"),
        params={k: str(v) for k, v in params.items()},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        body = await resp.json()
        assert resp.status == expect, body
        return body


def ids(page: dict[str, Any]) -> list[str]:
    return [item["batch"]["id"] for item in page["data"]]


async def test_the_list_filters_across_tenants_and_pages(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    providers = {"one": sandbox("./one"), "two": sandbox("./two")}
    routes = [{"match": {"tenant": "beta"}, "to": "two"}]
    gw = await start(start_gateway, tmp_path, providers=providers, routes=routes, default="one")
    a1 = await create(gw, "alpha", metadata={"team": "red"})
    a2 = await create(gw, "alpha", metadata={"team": "blue"})
    b1 = await create(gw, "beta", metadata={"team": "red"})

    page = await call(gw, "GET", "batches")
    assert ids(page) == [b1.id, a2.id, a1.id]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (b1.id, a1.id, False)
    item = page["data"][0]
    assert set(item) == {"batch", "tenant", "provider", "upstream_id", "rule"}
    assert (item["tenant"], item["provider"], item["rule"]) == ("beta", "two", "routes[0]")
    assert item["upstream_id"] and item["upstream_id"] != b1.id
    assert page["data"][1]["rule"] == "default"

    assert ids(await call(gw, "GET", "batches", tenant="alpha")) == [a2.id, a1.id]
    assert ids(await call(gw, "GET", "batches", provider="two")) == [b1.id]
    assert ids(await call(gw, "GET", "batches", status="validating")) == [b1.id, a2.id, a1.id]
    assert ids(await call(gw, "GET", "batches", status="completed")) == []
    now = int(time.time())
    assert ids(await call(gw, "GET", "batches", created_after=now + 5)) == []
    assert len(ids(await call(gw, "GET", "batches", created_before=now + 5))) == 3
    assert ids(await call(gw, "GET", "batches", created_before=now - 3600)) == []
    red = await call(gw, "GET", "batches", metadata_key="team", metadata_value="red")
    assert ids(red) == [b1.id, a1.id]

    first = await call(gw, "GET", "batches", limit=2)
    assert ids(first) == [b1.id, a2.id] and first["has_more"]
    rest = await call(gw, "GET", "batches", limit=2, after=first["last_id"])
    assert ids(rest) == [a1.id] and not rest["has_more"]
    one = await call(gw, "GET", "batches", metadata_key="team", metadata_value="red", limit=1)
    assert ids(one) == [b1.id] and one["has_more"]
    two = await call(
        gw, "GET", "batches", metadata_key="team", metadata_value="red", limit=1, after=b1.id
    )
    assert ids(two) == [a1.id] and not two["has_more"]

    for bad in (
        {"limit": 0},
        {"limit": 101},
        {"after": "batch_nope"},
        {"created_after": "yesterday"},
        {"metadata_key": "team"},
    ):
        error = await call(gw, "GET", "batches", expect=400, **bad)
        assert error["error"]["type"] == "invalid_request_error"


async def test_detail_has_the_status_history_and_the_routing_rule(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    providers = {"sandbox": sandbox("./sandbox", validate_seconds=0.3, line_seconds=0.3)}
    gw = await start(start_gateway, tmp_path, providers=providers)
    batch = await create(gw, "alpha", lines=3)
    detail = await call(gw, "GET", f"batches/{batch.id}")
    assert [h["status"] for h in detail["history"]] == ["validating"]
    assert detail["attempts"] == [
        {
            "provider": "sandbox",
            "at": detail["attempts"][0]["at"],
            "outcome": "created",
            "error": None,
        }
    ]
    assert detail["rule"] == "default" and detail["children"] == []
    deadline = time.monotonic() + 30
    while detail["batch"]["status"] not in TERMINAL_STATUSES:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        detail = await call(gw, "POST", f"batches/{batch.id}/refresh")
    statuses = [h["status"] for h in detail["history"]]
    assert statuses == ["validating", "in_progress", "completed"]
    ats = [h["at"] for h in detail["history"]]
    assert ats == sorted(ats)
    # Polls that keep the status add nothing; a retrieve after the end adds nothing either.
    await gw.client.batches.retrieve(batch.id)
    again = await call(gw, "GET", f"batches/{batch.id}")
    assert again["history"] == detail["history"]
    missing = await call(gw, "GET", "batches/batch_nope", expect=404)
    assert missing["error"]["code"] == "batch_not_found" or missing["error"]["param"] == "batch_id"


async def test_a_fallback_shows_both_attempts_and_no_provider_secrets(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    upstream = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    state = upstream.app[UPSTREAM]
    state.fail_on = "POST /v1/batches"
    state.fail_next = [429] * 3  # every attempt (1 + 2 retries) is refused
    base_url = str(upstream.make_url("/v1"))
    providers = {
        "down": {
            "type": "openai",
            "base_url": base_url,
            "api_key": UPSTREAM_KEY,
            "retry_backoff_seconds": 0,
        },
        "sandbox": sandbox("./sandbox"),
    }
    routes = [{"match": {}, "to": "down", "fallback": ["sandbox"]}]
    gw = await start(start_gateway, tmp_path, providers=providers, routes=routes, default="down")
    batch = await create(gw)
    detail = await call(gw, "GET", f"batches/{batch.id}")
    assert [(a["provider"], a["outcome"]) for a in detail["attempts"]] == [
        ("down", "failed"),
        ("sandbox", "created"),
    ]
    assert detail["attempts"][0]["error"]
    assert (detail["provider"], detail["rule"]) == ("sandbox", "routes[0]")

    health = await call(gw, "GET", "providers")
    by_name = {p["name"]: p for p in health["data"]}
    assert set(by_name) == {"down", "sandbox"}
    down = by_name["down"]
    assert (down["type"], down["enabled"], down["breaker"]) == ("openai", True, "closed")
    assert down["calls"] >= 3 and down["error_rate"] is not None and down["error_rate"] > 0
    assert down["latency_p50_ms"] is not None
    assert down["latency_p95_ms"] >= down["latency_p50_ms"]
    assert by_name["sandbox"]["active_batches"] == 1
    assert health["routes"] == gw.service.router.table()

    everything = [
        await call(gw, "GET", "batches"),
        detail,
        await call(gw, "POST", f"batches/{batch.id}/refresh"),
        health,
    ]
    text = repr(everything)
    for secret in (UPSTREAM_KEY, base_url, f":{upstream.port}", upstream.host + ":"):
        assert secret not in text


async def test_the_breaker_state_is_reported(start_gateway: StartGateway, tmp_path: Path) -> None:
    gw = await start(start_gateway, tmp_path)
    provider = gw.service.providers["sandbox"]
    for _ in range(provider.policy.breaker_failures):  # type: ignore[attr-defined]
        provider.breaker.failure()  # type: ignore[attr-defined]
    (entry,) = (await call(gw, "GET", "providers"))["data"]
    assert entry["breaker"] == "open"
    assert (entry["calls"], entry["error_rate"], entry["latency_p50_ms"]) == (0, None, None)


async def test_a_tenant_key_gets_403_on_every_admin_route(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start(start_gateway, tmp_path)
    batch = await create(gw)
    for method, path in (
        ("GET", "batches"),
        ("GET", f"batches/{batch.id}"),
        ("POST", f"batches/{batch.id}/refresh"),
        ("GET", "providers"),
    ):
        body = await call(gw, method, path, key=KEYS["alpha"], expect=403)
        assert body["error"]["code"] == "admin_only"
    await call(gw, "GET", "batches", key="wrong", expect=401)


async def test_open_auth_lets_the_local_caller_in(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(make_config(tmp_path, poller={"enabled": False}))
    batch = await create(gw, "default")
    page = await call(gw, "GET", "batches", key="anything")
    assert ids(page) == [batch.id] and page["data"][0]["tenant"] == "default"


async def test_a_sharded_batch_lists_its_children_only_under_it(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    providers = {"one": sandbox("./one"), "two": sandbox("./two")}
    shard = {"across": ["one", "two"], "max_lines": 2}
    routes = [{"match": {}, "shard": shard}]
    poller = {"interval_seconds": 0.05}
    gw = await start(
        start_gateway, tmp_path, providers=providers, routes=routes, default="one", poller=poller
    )
    batch = await create(gw, "alpha", lines=5)
    deadline = time.monotonic() + 60
    detail = await call(gw, "POST", f"batches/{batch.id}/refresh")
    while detail["batch"]["status"] not in TERMINAL_STATUSES:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
        detail = await call(gw, "GET", f"batches/{batch.id}")
    assert detail["batch"]["status"] == "completed"
    assert detail["provider"] == SHARDED and detail["rule"] == "routes[0]"
    children = detail["children"]
    assert len(children) == 3
    assert {c["provider"] for c in children} <= {"one", "two"}
    assert all(c["batch"]["status"] == "completed" and c["upstream_id"] for c in children)
    assert all(c["tenant"] == "alpha" for c in children)
    assert ids(await call(gw, "GET", "batches")) == [batch.id]
    assert [h["status"] for h in detail["history"]][-1] == "completed"
    child = await call(gw, "GET", f"batches/{children[0]['batch']['id']}")
    assert [a["outcome"] for a in child["attempts"]] == ["created"]


# The store methods, on both backends.


def record(batch_id: str, tenant: str, created_at: int, **extra: Any) -> BatchRecord:
    metadata = extra.pop("metadata", None)
    obj = {"id": batch_id, "object": "batch", "status": "validating", "metadata": metadata}
    return BatchRecord(
        id=batch_id,
        tenant=tenant,
        provider=extra.pop("provider", "p"),
        input_file_id="file_x",
        created_at=created_at,
        object=obj,
        **extra,
    )


async def test_store_records_each_status_once_and_exactly(store: Store) -> None:
    r = record("batch_a1", "t", 100)
    await store.insert_batch(r)
    r.pending = False
    assert await store.update_batch(r)  # same status: no event
    r.object["status"] = "in_progress"
    assert await store.update_batch(r)
    assert await store.update_batch(r)
    r.object["status"] = "completed"
    assert await store.update_batch(r)
    r.object["status"] = "failed"
    assert not await store.update_batch(r)  # terminal is final, and records nothing
    await store.add_batch_event(BatchEvent("batch_a1", 5, "routed", None, "p", None, "default"))
    await store.add_batch_event(BatchEvent("batch_a1", 6, "attempt", None, "p", "created", None))
    events = await store.batch_events("batch_a1")
    assert [(e.kind, e.status) for e in events] == [
        ("status", "validating"),
        ("status", "in_progress"),
        ("status", "completed"),
        ("routed", None),
        ("attempt", None),
    ]
    assert await store.routing_rules(["batch_a1", "batch_zz"]) == {"batch_a1": "default"}
    await store.delete_batch("batch_a1")
    assert await store.batch_events("batch_a1") == []


async def test_store_admin_list_filters_and_pages(store: Store) -> None:
    for i in range(7):
        tenant = "t1" if i % 2 else "t2"
        meta = {"k": "v"} if i % 3 == 0 else {"k": "w"}
        await store.insert_batch(
            record(f"batch_{i}", tenant, 100 + i, metadata=meta, provider=f"p{i % 2}")
        )
    await store.insert_batch(record("batch_child", "t1", 200, parent_id="batch_0"))
    everything = await store.admin_batches(AdminFilter(), after=None, limit=100)
    assert [r.id for r in everything.data] == [f"batch_{i}" for i in reversed(range(7))]
    t1 = await store.admin_batches(AdminFilter(tenant="t1"), after=None, limit=100)
    assert [r.id for r in t1.data] == ["batch_5", "batch_3", "batch_1"]
    p0 = await store.admin_batches(AdminFilter(provider="p0"), after=None, limit=100)
    assert [r.id for r in p0.data] == ["batch_6", "batch_4", "batch_2", "batch_0"]
    window = AdminFilter(created_after=102, created_before=104)
    assert [r.id for r in (await store.admin_batches(window, after=None, limit=9)).data] == [
        "batch_3",
        "batch_2",
    ]
    tagged = AdminFilter(metadata=("k", "v"))
    seen: list[str] = []
    after: str | None = None
    more = True
    while more:
        page = await store.admin_batches(tagged, after=after, limit=1)
        seen += [r.id for r in page.data]
        after, more = page.data[-1].id if page.data else None, page.has_more
    assert seen == ["batch_6", "batch_3", "batch_0"]
    with pytest.raises(Exception, match="batch_child"):
        await store.admin_batches(AdminFilter(), after="batch_child", limit=1)


def test_the_call_window_is_bounded_in_size_and_time() -> None:
    now = [0.0]
    window = CallWindow(size=3, seconds=10, clock=lambda: now[0])
    assert window.health().calls == 0
    for failed, seconds in ((True, 1.0), (False, 0.002), (False, 0.004), (True, 0.010)):
        window.add(failed, seconds)
    health = window.health()
    assert (health.calls, health.error_rate) == (3, pytest.approx(1 / 3))
    assert (health.latency_p50_ms, health.latency_p95_ms) == (4.0, 10.0)
    now[0] = 11.0
    assert window.health().error_rate is None
