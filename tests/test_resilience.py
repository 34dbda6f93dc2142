"""Fallback, retries, timeouts, the circuit breaker and crash reconciliation."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from gateway.blobs import LocalBlobs
from gateway.config import Config
from providers.base import ProviderError
from providers.context import ProviderContext
from providers.resilience import CircuitBreaker, Policy, ResilientProvider
from providers.sandbox import SandboxProvider
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.support import MemoryState, chat_file, make_config
from tests.test_flow_sdk import wait_terminal

KEY = "sk-up-resilience-key"
Servers = Callable[..., Awaitable[TestServer]]


def remote(server: TestServer, **options: Any) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": str(server.make_url("/v1")),
        "api_key": KEY,
        "retry_backoff_seconds": 0,
        "read_timeout_seconds": 0.5,
        **options,
    }


async def two_upstreams(
    aiohttp_server: Servers, tmp_path: Path, **config: Any
) -> tuple[Config, FakeOpenAIState, FakeOpenAIState]:
    a = await aiohttp_server(make_openai_upstream(KEY))
    b = await aiohttp_server(make_openai_upstream(KEY))
    cfg = make_config(
        tmp_path,
        providers={"a": remote(a), "b": remote(b)},
        routes=[{"to": "a", "fallback": ["b"]}],
        default="a",
        poller={"enabled": False},
        **config,
    )
    return cfg, a.app[UPSTREAM], b.app[UPSTREAM]


async def create(gw: Gateway, file_id: str | None = None) -> Any:
    if file_id is None:
        f = await gw.client.files.create(
            file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch"
        )
        file_id = f.id
    return await gw.client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


@pytest.mark.parametrize("fault", [500, 429, "hang", "reset", "malformed"])
async def test_create_falls_back_and_makes_one_batch(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path, fault: int | str
) -> None:
    config, a, b = await two_upstreams(aiohttp_server, tmp_path)
    a.fail_on = "POST /v1/batches"
    a.fail_next = [fault] * 3  # every attempt (1 + 2 retries) fails
    gw = await start_gateway(config)
    batch = await create(gw)
    assert batch.status == "validating"
    assert len(b.batches) == 1
    assert [x.id async for x in gw.client.batches.list()] == [batch.id]
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and record.provider == "b"
    # A definite failure (429) is retried; any other (a 5xx may come after the work was
    # done) is looked up by tag first, and then falls back.
    attempts = [r for r in a.requests if r == ("POST", "/v1/batches")]
    lookups = [r for r in a.requests if r == ("GET", "/v1/batches")]
    assert (len(attempts), len(lookups)) == ((3, 0) if fault == 429 else (1, 1))
    assert a.batches == {}


async def test_create_whose_answer_was_lost_is_attached_not_duplicated(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    config, a, b = await two_upstreams(aiohttp_server, tmp_path)
    a.fail_on = "POST /v1/batches"
    a.fail_next = ["reset_after"]  # a made the batch, but the answer never arrived
    gw = await start_gateway(config)
    batch = await create(gw)
    assert len(a.batches) == 1 and len(b.batches) == 0
    (upstream,) = a.batches.values()
    assert upstream["metadata"] == {"gateway_batch_id": batch.id}
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and (record.provider, record.upstream_id) == ("a", upstream["id"])
    assert ("GET", "/v1/batches") in a.requests  # found by its tag


async def test_input_errors_go_straight_back_without_fallback(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    config, a, b = await two_upstreams(aiohttp_server, tmp_path)
    a.fail_on = "POST /v1/batches"
    a.fail_next = [400]
    gw = await start_gateway(config)
    with pytest.raises(openai.BadRequestError):
        await create(gw)
    assert b.requests == []
    assert [x async for x in gw.client.batches.list()] == []


async def test_breaker_opens_skips_the_provider_then_probes(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    a_server = await aiohttp_server(make_openai_upstream(KEY))
    b_server = await aiohttp_server(make_openai_upstream(KEY))
    a, b = a_server.app[UPSTREAM], b_server.app[UPSTREAM]
    options = {"max_retries": 0, "breaker_failures": 2, "breaker_cooldown_seconds": 0.3}
    config = make_config(
        tmp_path,
        providers={"a": remote(a_server, **options), "b": remote(b_server)},
        routes=[{"to": "a", "fallback": ["b"]}],
        default="a",
        poller={"enabled": False},
    )
    gw = await start_gateway(config)
    breaker = gw.service.providers["a"].breaker  # type: ignore[attr-defined]
    a.fail_on = "POST /v1/batches"
    a.fail_next = [503] * 100
    first = await create(gw)  # uploads the file to a (ok), then the create fails
    file_id = first.input_file_id
    await create(gw, file_id)  # the upload is cached: two failures in a row
    assert breaker.state == "open"
    seen = len(a.requests)
    await create(gw, file_id)  # open: a is skipped, no request reaches it
    assert len(a.requests) == seen
    assert len(b.batches) == 3

    await asyncio.sleep(0.35)
    a.fail_next = []
    await create(gw, file_id)  # the probe goes to a and succeeds: closed again
    assert breaker.state == "closed"
    assert len(a.batches) == 1


def test_breaker_state_machine() -> None:
    now = [0.0]
    changes: list[str] = []
    breaker = CircuitBreaker(3, 10.0, on_change=changes.append, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "open" and not breaker.allow() and not breaker.available()
    now[0] = 10.0
    assert breaker.available() and breaker.allow()  # the one probe
    assert breaker.state == "half_open" and not breaker.allow()
    breaker.failure()  # probe failed: open again for a full cool-down
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert changes == ["open", "half_open", "open", "half_open", "closed"]


async def test_retries_honour_retry_after_with_backoff(tmp_path: Path) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    class Flaky(SandboxProvider):
        failures = [
            ProviderError("retryable", "429", retry_after=1.5),
            ProviderError("retryable", "x"),
        ]

        async def get_batch(self, upstream_id: str) -> Any:
            if self.failures:
                raise self.failures.pop(0)
            return "ok"

    flaky = Flaky(ProviderContext("s", frozenset(), MemoryState(), LocalBlobs(tmp_path)))
    policy = Policy(max_retries=2, backoff=0.4, max_backoff=8)
    provider = ResilientProvider(flaky, policy, sleep=sleep)
    assert await provider.get_batch("x") == "ok"
    assert slept[0] == 1.5  # Retry-After wins
    assert 0.4 <= slept[1] <= 0.8  # equal jitter around 0.4 * 2**1


async def test_read_timeout_serves_stale_state(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    config, a, _ = await two_upstreams(aiohttp_server, tmp_path)
    gw = await start_gateway(config)
    batch = await create(gw)
    a.fail_on = "GET /v1/batches/"
    a.fail_next = ["hang"] * 3
    async with gw.http.get(gw.url(f"/v1/batches/{batch.id}")) as resp:
        assert resp.status == 200
        assert resp.headers["X-Gateway-Stale"] == "true"
        assert (await resp.json())["status"] == "validating"


async def test_concurrency_limit_per_provider(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    server = await aiohttp_server(make_openai_upstream(KEY, latency=0.05))
    config = make_config(
        tmp_path,
        providers={"a": remote(server, max_concurrency=2)},
        default="a",
        poller={"enabled": False},
    )
    gw = await start_gateway(config)
    batches = [await create(gw) for _ in range(3)]
    state = server.app[UPSTREAM]
    state.peak_in_flight = 0
    await asyncio.gather(*(gw.client.batches.retrieve(b.id) for b in batches * 3))
    assert state.peak_in_flight == 2


async def test_crash_between_upstream_create_and_store_update_is_reconciled(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> None:
    config, a, _ = await two_upstreams(aiohttp_server, tmp_path)
    gw = await start_gateway(config)
    made = await create(gw)
    lost = await create(gw)
    # Rewind both rows to "pending" as if the process died right after the upstream call;
    # for `lost`, the upstream never got the create either.
    for batch in (made, lost):
        record = await gw.service.store.get_batch(batch.id)
        assert record is not None
        record.pending, record.upstream_id = True, None
        record.object["status"] = "validating"
        await gw.service.store.update_batch(record)
    for upstream in list(a.batches.values()):
        if upstream["metadata"] == {"gateway_batch_id": lost.id}:
            del a.batches[upstream["id"]]
    await gw.server.close()

    counted = {"provider": record.provider, "status": "failed"}  # `lost` was rewound last
    failed_before = REGISTRY.get_sample_value("gateway_batches_terminal_total", counted) or 0.0
    restarted = await start_gateway(config)
    # Settled in the background at startup (with no poller to do it), not before serving.
    for _ in range(100):
        if not await restarted.service.store.pending_batches():
            break
        await asyncio.sleep(0.05)
    attached = await restarted.client.batches.retrieve(made.id)
    assert attached.status == "in_progress"  # re-read from upstream, advancing as usual
    record = await restarted.service.store.get_batch(made.id)
    assert record is not None and record.upstream_id is not None and not record.pending
    failed = await restarted.client.batches.retrieve(lost.id)
    assert failed.status == "failed"
    assert failed.errors is not None and failed.errors.data[0].code == "gateway_interrupted"
    # The end is counted like any other (once: the reconciler ran once, at startup).
    assert REGISTRY.get_sample_value("gateway_batches_terminal_total", counted) == (
        failed_before + 1
    )
    done = await wait_terminal(restarted.client, made.id)
    assert done.status == "completed"
