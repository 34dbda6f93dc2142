"""Exactly once at the provider: one create through the gateway is one upstream batch.

Real fake upstreams on loopback, the real `openai` SDK, a real SQLite file; faults
are injected by the fake, never by mocking the gateway's code.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from gateway import instance
from gateway.app import POLLER
from providers.base import GATEWAY_TAG
from tests.conftest import Gateway, StartGateway
from tests.fakes.anthropic_upstream import ANTHROPIC, make_anthropic_upstream
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_resilience import KEY, remote

Servers = Callable[..., Awaitable[TestServer]]
ANTHROPIC_KEY = "sk-ant-exactly-once"


async def upstream_and_gateway(
    aiohttp_server: Servers,
    start_gateway: StartGateway,
    tmp_path: Path,
    *,
    poller: dict[str, Any] | None = None,
    **fake: Any,
) -> tuple[Gateway, FakeOpenAIState]:
    server = await aiohttp_server(make_openai_upstream(KEY, **fake))
    config = make_config(
        tmp_path,
        providers={"up": remote(server)},
        default="up",
        poller=poller or {"enabled": False},
    )
    return await start_gateway(config), server.app[UPSTREAM]


async def upload(gw: Gateway, lines: int = 2) -> str:
    f = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(lines))), purpose="batch"
    )
    return f.id


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": f"v{i}" for i in range(16)},  # the provider's limit, all the caller's
        {**{f"k{i}": f"v{i}" for i in range(15)}, GATEWAY_TAG: "batch_" + "A" * 24},
        {GATEWAY_TAG: "batch_" + "B" * 24},
    ],
    ids=["sixteen-keys", "fifteen-and-a-forged-tag", "forged-tag-only"],
)
async def test_the_tag_always_reaches_the_provider_and_only_the_gateway_writes_it(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path, metadata: dict[str, str]
) -> None:
    gw, state = await upstream_and_gateway(aiohttp_server, start_gateway, tmp_path)
    batch = await gw.client.batches.create(
        input_file_id=await upload(gw),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    (upstream,) = state.batches.values()
    sent = upstream["metadata"]
    assert sent[GATEWAY_TAG] == batch.id
    own = {k: v for k, v in metadata.items() if k != GATEWAY_TAG}
    # As many of the caller's pairs as the provider's limit of 16 leaves room for.
    assert {k: v for k, v in sent.items() if k != GATEWAY_TAG} == dict(list(own.items())[:15])
    # The caller gets its own metadata back, whole and unchanged.
    assert batch.metadata == metadata
    assert (await gw.client.batches.retrieve(batch.id)).metadata == metadata


async def test_a_create_slower_than_any_timeout_in_a_live_process_is_never_failed(
    aiohttp_server: Servers,
    start_gateway: StartGateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Housekeeping runs all through a create that takes many heartbeat timeouts."""
    poller = {
        "interval_seconds": 30,
        "webhook_interval_seconds": 0.05,  # housekeeping (settling creates) this often
        "heartbeat_seconds": 0.05,
        "instance_timeout_seconds": 0.2,
    }
    gw, state = await upstream_and_gateway(aiohttp_server, start_gateway, tmp_path, poller=poller)
    file_id = await upload(gw)
    state.latency = 0.4  # under the 0.5 s read timeout, but each call is 2x the timeout
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        batch = await gw.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert time.monotonic() - started >= 0.6  # upload + create: 3x the instance timeout
    assert batch.status == "validating" and batch.errors is None
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and not record.pending and record.upstream_id is not None
    assert len(state.batches) == 1
    assert not [r for r in caplog.records if "interrupted" in r.getMessage()]


def test_an_instance_is_gone_only_when_that_is_certain() -> None:
    me = instance.start()
    try:
        now = time.time()
        fresh = replace(me, id="other", heartbeat_at=now)
        assert not instance.is_gone(me, now + 3600, 1)  # live here, however silent
        # Same host and pid namespace: the pid decides, not the heartbeat.
        init = replace(fresh, pid=1, started=instance.process_started(1) or "")
        silent = max(instance.BOOT_TIME + 1, now - 3600)
        assert not instance.is_gone(replace(init, heartbeat_at=silent), now, 1)
        assert instance.is_gone(replace(fresh, pid=2**22 + 1), now, 60)  # no such pid
        assert instance.is_gone(replace(init, started="1"), now, 60)  # pid 1 reused
        assert instance.is_gone(fresh, now, 60)  # this process, but stopped
        # Another host: only a heartbeat older than the timeout says so.
        away = replace(fresh, host="elsewhere", heartbeat_at=now - 30)
        assert not instance.is_gone(away, now, 60)
        assert instance.is_gone(away, now + 31, 60)
        # This host, before its last boot: gone at once.
        assert instance.is_gone(replace(away, host=instance.HOST, heartbeat_at=1.0), now, 60)
    finally:
        instance.stop(me.id)


async def test_a_stopped_instance_hands_its_leases_over_at_once(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    """No waiting out `lease_seconds` for a predecessor that is provably gone."""
    poller = {"interval_seconds": 0.2, "lease_seconds": 120, "webhook_interval_seconds": 0.05}
    gw, state = await upstream_and_gateway(aiohttp_server, start_gateway, tmp_path, poller=poller)
    store = gw.service.store
    dead = instance.start()
    instance.stop(dead.id)  # registered, then its process "died" without a word
    await store.register_instance(dead)
    assert await store.acquire_lease("housekeeping", dead.id, 120, time.time())
    batch = await gw.client.batches.create(
        input_file_id=await upload(gw), endpoint="/v1/chat/completions", completion_window="24h"
    )
    up = await upstream_id(gw, batch.id)
    polls = state.requests.count(("GET", f"/v1/batches/{up}"))
    # The dead instance holds the batch's poll lease for two more minutes.
    assert await store.claim_active_batches(dead.id, 10, 120, time.time() + 60)
    started = time.monotonic()
    while time.monotonic() - started < 5 and (
        await store.acquire_lease("housekeeping", "probe", 1, time.time())
        or state.requests.count(("GET", f"/v1/batches/{up}")) == polls
    ):
        await store.release_lease("housekeeping", "probe")
        await asyncio.sleep(0.05)
    # Within 5 s (heartbeat 2 s): the lease is the live poller's, and the batch is polled.
    assert dead.id not in {i.id for i in await store.instances()}
    assert not await store.acquire_lease("housekeeping", "probe", 1, time.time())
    assert state.requests.count(("GET", f"/v1/batches/{up}")) > polls


async def upstream_id(gw: Gateway, batch_id: str) -> str:
    record = await gw.service.store.get_batch(batch_id)
    assert record is not None and record.upstream_id is not None
    return record.upstream_id


def audit(state: FakeOpenAIState, rows: dict[str, str | None]) -> tuple[int, int]:
    """(duplicates, orphans) at the provider, given each gateway batch's upstream id.

    A duplicate is a second live upstream batch for one gateway id; an orphan is a live
    tagged upstream batch that no row points at. Cancelled ones cost nothing more.
    """
    live: dict[str, list[str]] = {}
    for upstream in state.batches.values():
        tag = (upstream.get("metadata") or {}).get(GATEWAY_TAG)
        if tag and upstream["status"] not in ("cancelling", "cancelled"):
            live.setdefault(tag, []).append(upstream["id"])
    duplicates = sum(len(ids) - 1 for ids in live.values())
    orphans = sum(1 for tag, ids in live.items() for up in ids if rows.get(tag) != up)
    return duplicates, orphans


async def settle_everything(gw: Gateway, defer_seconds: float) -> None:
    """What the housekeeping replica does after faults: settle creates, then sweep."""
    svc = gw.service
    deadline = time.monotonic() + 60
    while await svc.store.pending_batches():
        assert time.monotonic() < deadline, "creates left unsettled"
        svc._settle_after.clear()  # no backoff waits in the test
        await svc.settle_pending()
        await asyncio.sleep(0.05)
    await asyncio.sleep(defer_seconds + 0.5)  # let every late execution land first
    # Faults hit the sweep's own cancels too (or the breaker pauses them): what one pass
    # could not repair, a later one does.
    for _ in range(3):
        await gw.server.app[POLLER].repairer.sweep()
        await asyncio.sleep(0.25)  # past the breaker's cool-down


@pytest.mark.parametrize("fallback", [False, True], ids=["one-provider", "with-fallback"])
async def test_300_creates_under_faults_are_each_exactly_one_upstream_batch(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path, fallback: bool
) -> None:
    servers = [await aiohttp_server(make_openai_upstream(KEY)) for _ in range(2)]
    states = [s.app[UPSTREAM] for s in servers]
    for i, state in enumerate(states):
        state.fail_on = "POST /v1/batches"
        state.fault_seed = 13 + i
        state.slow_answer_seconds = 0.8  # past the gateway's 0.5 s read timeout
        state.defer_seconds = 0.3
        # 20% plain 500s; 10% that may be carried out (at once or late).
        state.fault_rates = {
            "500": 0.20,
            "error_after": 0.03,
            "reset_after": 0.02,
            "slow_after": 0.02,
            "deferred_error": 0.02,
            "deferred_hang": 0.01,
        }
    options = {"breaker_cooldown_seconds": 0.2}
    providers = {"a": remote(servers[0], **options), "b": remote(servers[1], **options)}
    config = make_config(
        tmp_path,
        providers=providers,
        routes=[{"to": "a", "fallback": ["b"] if fallback else []}],
        default="a",
        poller={"interval_seconds": 30, "webhook_interval_seconds": 3600},
    )
    gw = await start_gateway(config)
    client = openai.AsyncOpenAI(base_url=str(gw.server.make_url("/v1")), api_key="x")
    file_id = await upload(gw)
    seen: list[str] = []
    failures: list[openai.APIStatusError] = []
    limit = asyncio.Semaphore(8)

    async def one() -> None:
        async with limit:
            try:
                batch = await client.batches.create(  # the SDK's own retries, as shipped
                    input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
                )
            except openai.APIStatusError as exc:
                failures.append(exc)
            else:
                seen.append(batch.id)

    try:
        await asyncio.gather(*(one() for _ in range(300)))
    finally:
        await client.close()
    await settle_everything(gw, 0.3)

    injected = sum(len(s.fault_log) for s in states)
    assert injected > 60  # the faults did happen
    rows = {}
    for batch_id in seen:
        record = await gw.service.store.get_batch(batch_id)
        assert record is not None and not record.pending
        rows[batch_id] = record.upstream_id
        if record.status != "failed":
            assert record.upstream_id is not None
    assert len(set(seen)) == len(seen)
    for state in states:
        assert audit(state, rows) == (0, 0)
    # Every batch the client was told about runs upstream, exactly once.
    stopped = ("cancelling", "cancelled")
    ran = [up for s in states for up in s.batches.values() if up["status"] not in stopped]
    assert sorted(up["metadata"][GATEWAY_TAG] for up in ran) == sorted(seen)
    for exc in failures:
        assert exc.status_code in (429, 500, 502, 503, 504)
        body = exc.body if isinstance(exc.body, dict) else {}
        assert set(body) >= {"message", "type", "code"}
        assert "UP" not in body["message"] and "127.0.0.1" not in body["message"]


def repairs(kind: str, action: str, provider: str = "up") -> float:
    labels = {"provider": provider, "kind": kind, "action": action}
    return REGISTRY.get_sample_value("gateway_upstream_repairs_total", labels) or 0.0


async def test_concurrent_creates_upload_a_new_file_once(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw, state = await upstream_and_gateway(aiohttp_server, start_gateway, tmp_path)
    file_id = await upload(gw)
    state.latency = 0.05
    await asyncio.gather(
        *(
            gw.client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            for _ in range(8)
        )
    )
    assert state.requests.count(("POST", "/v1/files")) == 1
    (copy,) = state.files.values()
    assert {b["input_file_id"] for b in state.batches.values()} == {copy["id"]}
    assert copy["filename"] == f"{file_id}.jsonl"  # findable by the gateway's file id


async def test_a_second_upload_after_a_lost_answer_is_deleted_by_the_sweep(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw, state = await upstream_and_gateway(aiohttp_server, start_gateway, tmp_path)
    file_id = await upload(gw)
    state.fail_on, state.fail_next = "POST /v1/files", ["reset_after"]  # stored, answer lost
    before = repairs("duplicate_upload", "deleted")
    batch = await gw.client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert len(state.files) == 2  # the upload was retried
    await gw.server.app[POLLER].repairer.sweep()
    (kept,) = state.files.values()
    (upstream,) = state.batches.values()
    assert upstream["input_file_id"] == kept["id"]  # the copy the batch reads stays
    assert upstream["metadata"] == {GATEWAY_TAG: batch.id}
    assert repairs("duplicate_upload", "deleted") == before + 1
    await gw.server.app[POLLER].repairer.sweep()  # a second pass finds nothing to do
    assert repairs("duplicate_upload", "deleted") == before + 1


@pytest.mark.parametrize("then", ["made-again", "refused"])
async def test_a_create_carried_out_late_is_cancelled_by_the_sweep(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path, then: str
) -> None:
    """A 500 whose create the provider runs after the gateway's lookup found nothing."""
    gw, state = await upstream_and_gateway(aiohttp_server, start_gateway, tmp_path)
    file_id = await upload(gw)
    state.defer_seconds = 0.3
    state.fail_on = "POST /v1/batches"
    state.fail_next = ["deferred_error"] + ([429] * 3 if then == "refused" else [])
    kind = "duplicate_batch" if then == "made-again" else "orphan_batch"
    before = repairs(kind, "cancelled")
    if then == "made-again":
        batch = await gw.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch_id = batch.id
    else:
        with pytest.raises(openai.InternalServerError) as info:
            await gw.client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert info.value.status_code == 503
        (record,) = (await gw.service.store.list_batches("default", after=None, limit=5)).data
        assert record.status == "failed"  # kept, so the late batch has a row to be judged by
        batch_id = record.id
    await asyncio.sleep(0.5)  # the provider carries the first attempt out
    tagged = [b for b in state.batches.values() if b["metadata"][GATEWAY_TAG] == batch_id]
    assert len(tagged) == (2 if then == "made-again" else 1)
    await gw.server.app[POLLER].repairer.sweep()
    rows = {batch_id: (await gw.service.store.get_batch(batch_id)).upstream_id}  # type: ignore[union-attr]
    assert audit(state, rows) == (0, 0)
    assert repairs(kind, "cancelled") == before + 1


@pytest.mark.parametrize("fallback", [False, True], ids=["alone", "with-fallback"])
@pytest.mark.parametrize("fault", ["error_after", "slow_after", "reset_after", 500, 529])
async def test_one_create_at_anthropic_is_one_message_batch(
    aiohttp_server: Servers,
    start_gateway: StartGateway,
    tmp_path: Path,
    fault: str | int,
    fallback: bool,
) -> None:
    """Message Batches carry no tag: a create of unknown outcome is recognised by the batch
    made since with its request count, never made again blindly, nor moved elsewhere."""
    claude = await aiohttp_server(make_anthropic_upstream(ANTHROPIC_KEY))
    other = await aiohttp_server(make_openai_upstream(KEY))
    anthropic = claude.app[ANTHROPIC]
    anthropic.fail_on, anthropic.fail_next = "POST /v1/messages/batches", [fault]
    anthropic.slow_answer_seconds = 0.8  # past the 0.5 s read timeout
    providers = {
        "claude": {
            "type": "anthropic",
            "base_url": str(claude.make_url("")),
            "api_key": ANTHROPIC_KEY,
            "default_max_tokens": 64,
            "dir": "./anthropic",
            "retry_backoff_seconds": 0,
            "read_timeout_seconds": 0.5,
        },
        "other": remote(other),
    }
    config = make_config(
        tmp_path,
        providers=providers,
        routes=[{"to": "claude", "fallback": ["other"] if fallback else []}],
        default="claude",
        poller={"enabled": False},
    )
    gw = await start_gateway(config)
    client = openai.AsyncOpenAI(base_url=str(gw.server.make_url("/v1")), api_key="x")
    try:
        uploaded = await client.files.create(
            file=("in.jsonl", io.BytesIO(chat_file(3))), purpose="batch"
        )
        batch = await client.batches.create(  # the SDK's default retries
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    finally:
        await client.close()
    assert [b.id async for b in gw.client.batches.list()] == [batch.id]
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and not record.pending
    made = len(anthropic.batches) + len(other.app[UPSTREAM].batches)
    assert made == 1
    if fault in ("error_after", "slow_after", "reset_after"):  # the first attempt made it
        (upstream,) = anthropic.batches.values()
        assert (record.provider, record.upstream_id) == ("claude", upstream["id"])
    # It runs through the gateway like any other batch, with its results.
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 3


async def test_two_creates_at_anthropic_that_could_be_each_other_wait_to_be_told_apart(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    """With another create of the same size in flight, a lost answer is not guessed: the
    gateway answers `validating` and settles it once the other has its batch."""
    claude = await aiohttp_server(make_anthropic_upstream(ANTHROPIC_KEY))
    anthropic = claude.app[ANTHROPIC]
    provider = {
        "type": "anthropic",
        "base_url": str(claude.make_url("")),
        "api_key": ANTHROPIC_KEY,
        "default_max_tokens": 64,
        "dir": "./anthropic",
        "read_timeout_seconds": 0.5,
    }
    config = make_config(
        tmp_path, providers={"claude": provider}, default="claude", poller={"enabled": False}
    )
    gw = await start_gateway(config)
    file_id = (
        await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
    ).id
    anthropic.fail_on = "POST /v1/messages/batches"
    anthropic.fail_next = ["slow_after", "slow_after"]
    anthropic.slow_answer_seconds = 0.8
    first, second = await asyncio.gather(
        *(
            gw.client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            for _ in range(2)
        )
    )
    assert len(anthropic.batches) == 2
    await gw.service.settle_pending()
    for batch in (first, second):
        record = await gw.service.store.get_batch(batch.id)
        assert record is not None and not record.pending and record.upstream_id
    ups = {(await gw.service.store.get_batch(b.id)).upstream_id for b in (first, second)}  # type: ignore[union-attr]
    assert ups == set(anthropic.batches)  # one each, none shared, no third made


async def test_two_provider_entries_on_one_account_never_repair_each_others_batches(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    """Each entry's sweep lists the other's batches and uploads too: they are in use."""
    server = await aiohttp_server(make_openai_upstream(KEY))
    state = server.app[UPSTREAM]
    config = make_config(
        tmp_path,
        providers={"up": remote(server), "twin": remote(server)},
        routes=[{"match": {"metadata": {"via": "twin"}}, "to": "twin"}],
        default="up",
        poller={"enabled": False},
    )
    gw = await start_gateway(config)
    file_id = await upload(gw)
    made = [
        await gw.client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=metadata,
        )
        for metadata in ({"via": "up"}, {"via": "twin"})
    ]
    assert {(await gw.service.store.get_batch(b.id)).provider for b in made} == {"up", "twin"}  # type: ignore[union-attr]
    assert len(state.files) == 2  # the file, uploaded once through each entry

    def repaired() -> float:
        return sum(
            repairs(kind, action, provider)
            for provider in ("up", "twin")
            for kind, action in (
                ("duplicate_batch", "cancelled"),
                ("orphan_batch", "cancelled"),
                ("duplicate_upload", "deleted"),
            )
        )

    before = repaired()
    await gw.server.app[POLLER].repairer.sweep()
    assert repaired() == before
    assert len(state.files) == 2
    assert {b["status"] for b in state.batches.values()} == {"validating"}
