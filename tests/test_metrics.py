"""Metric values after a scripted workload, and the /metrics exposition itself."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from gateway.app import POLLER
from tests.conftest import StartGateway
from tests.fakes.openai_upstream import UPSTREAM, make_openai_upstream
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal

CHAT = "/v1/chat/completions"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Metric values relative to a starting point (the registry is process-wide)."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self.start = {self._key(n, labels): value(n, **labels) for n, labels in series}

    @staticmethod
    def _key(name: str, labels: dict[str, str]) -> str:
        return name + repr(sorted(labels.items()))

    def __call__(self, name: str, **labels: str) -> float:
        return value(name, **labels) - self.start.get(self._key(name, labels), 0.0)


async def test_metric_values_after_a_scripted_workload(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> None:
    flaky = await aiohttp_server(make_openai_upstream("k"))
    remote = {
        "type": "openai",
        "base_url": str(flaky.make_url("/v1")),
        "api_key": "k",
        "retry_backoff_seconds": 0,
    }
    config = make_config(
        tmp_path,
        providers={
            "flaky": remote,
            "sandbox": make_config(tmp_path).providers["sandbox"].model_dump(),
        },
        routes=[{"match": {"metadata": {"lane": "flaky"}}, "to": "flaky", "fallback": ["sandbox"]}],
        default="sandbox",
        poller={"enabled": False},
    )
    watched = [
        ("gateway_batches_created_total", {"provider": "sandbox", "endpoint": CHAT}),
        ("gateway_file_bytes_total", {"direction": "upload"}),
        ("gateway_file_bytes_total", {"direction": "download"}),
        ("gateway_batches_terminal_total", {"provider": "sandbox", "status": "completed"}),
        ("gateway_batch_requests_total", {"provider": "sandbox", "result": "completed"}),
        (
            "gateway_fallbacks_total",
            {"from_provider": "flaky", "to_provider": "sandbox", "reason": "retryable"},
        ),
        (
            "gateway_upstream_requests_total",
            {"provider": "flaky", "operation": "create", "outcome": "retryable"},
        ),
        ("gateway_upstream_retries_total", {"provider": "flaky", "operation": "create"}),
        ("gateway_routing_decisions_total", {"rule": "routes[0]", "provider": "sandbox"}),
        ("gateway_routing_decisions_total", {"rule": "default", "provider": "sandbox"}),
        (
            "gateway_http_requests_total",
            {"route": "/v1/batches", "method": "POST", "status": "200"},
        ),
        (
            "gateway_http_requests_total",
            {"route": "/v1/files/{file_id}", "method": "GET", "status": "404"},
        ),
        ("gateway_batch_completion_seconds_count", {"provider": "sandbox"}),
    ]
    delta = Delta(*watched)
    gw = await start_gateway(config)
    content = chat_file(3)
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    flaky.app[UPSTREAM].fail_on = "POST /v1/batches"
    flaky.app[UPSTREAM].fail_next = [429] * 3  # refused each time: retried, then fallen back
    ids = []
    for metadata in ({"lane": "flaky"}, None):
        batch = await gw.client.batches.create(
            input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata=metadata
        )
        ids.append(batch.id)
    downloaded = 0
    for batch_id in ids:
        done = await wait_terminal(gw.client, batch_id)
        assert done.output_file_id is not None
        downloaded += len((await gw.client.files.content(done.output_file_id)).content)
    async with gw.http.get(gw.url("/v1/files/file-nope")) as resp:
        assert resp.status == 404

    assert delta("gateway_batches_created_total", provider="sandbox", endpoint=CHAT) == 2
    assert delta("gateway_file_bytes_total", direction="upload") == len(content)
    assert delta("gateway_file_bytes_total", direction="download") == downloaded > 0
    assert delta("gateway_batches_terminal_total", provider="sandbox", status="completed") == 2
    assert delta("gateway_batch_requests_total", provider="sandbox", result="completed") == 6
    assert delta("gateway_batch_completion_seconds_count", provider="sandbox") == 2
    assert (
        delta(
            "gateway_fallbacks_total",
            from_provider="flaky",
            to_provider="sandbox",
            reason="retryable",
        )
        == 1
    )
    outcome = {"provider": "flaky", "operation": "create"}
    assert delta("gateway_upstream_requests_total", **outcome, outcome="retryable") == 3
    assert delta("gateway_upstream_retries_total", **outcome) == 2
    assert delta("gateway_routing_decisions_total", rule="routes[0]", provider="sandbox") == 1
    assert delta("gateway_routing_decisions_total", rule="default", provider="sandbox") == 1
    http = {"route": "/v1/batches", "method": "POST", "status": "200"}
    assert delta("gateway_http_requests_total", **http) == 2
    missing = {"route": "/v1/files/{file_id}", "method": "GET", "status": "404"}
    assert delta("gateway_http_requests_total", **missing) == 1
    assert value("gateway_circuit_breaker_state", provider="flaky") == 0
    assert value("gateway_build_info", version=__import__("gateway").__version__) == 1

    async with gw.http.get(gw.url("/metrics")) as resp:
        exposition = await resp.text()
    assert resp.status == 200 and "gateway_http_requests_total" in exposition
    # Bounded labels: no object ids, no raw paths, no keys.
    assert not re.search(r"(batch_|file-)[A-Za-z0-9]{24}", exposition)
    assert "file-nope" not in exposition


async def test_batch_gauges_come_from_the_store_and_survive_a_restart(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    config = make_config(tmp_path, poller={"enabled": False})
    gw = await start_gateway(config)
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch")
    done = []
    for _ in range(2):
        batch = await gw.client.batches.create(
            input_file_id=f.id, endpoint=CHAT, completion_window="24h"
        )
        done.append(await wait_terminal(gw.client, batch.id))
    await gw.client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    await gw.server.app[POLLER].refresh_gauges()
    assert value("gateway_batches", provider="sandbox", status="completed") == 2
    assert value("gateway_batches", provider="sandbox", status="validating") == 1
    assert value("gateway_batch_oldest_seconds", provider="sandbox", status="validating") >= 0
    await gw.server.close()

    restarted = await start_gateway(config)
    await asyncio.sleep(0)
    await restarted.server.app[POLLER].refresh_gauges()
    assert value("gateway_batches", provider="sandbox", status="completed") == 2
    assert value("gateway_batches", provider="sandbox", status="validating") == 1


async def test_metrics_has_no_created_series(start_gateway: StartGateway, tmp_path: Path) -> None:
    """prometheus-client's per-child `*_created` series are turned off at import."""
    gw = await start_gateway(make_config(tmp_path, poller={"enabled": False}))
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch")
    await gw.client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    async with gw.http.get(gw.url("/metrics")) as resp:
        exposition = await resp.text()
    assert resp.status == 200
    # Counters and histograms with children are there, none with a `_created` sample
    # (`gateway_batches_created_total` is a counter's own name, not such a sample).
    assert "gateway_batches_created_total{" in exposition
    assert "gateway_http_request_duration_seconds_bucket{" in exposition
    assert not re.findall(r"^\w+_created[{ ]", exposition, re.MULTILINE)
