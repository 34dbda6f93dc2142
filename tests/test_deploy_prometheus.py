"""A real Prometheus scrapes a real `batch-gateway serve` after a workload, and every query
of the Grafana dashboard answers with data: the dashboard cannot drift from the metrics.

The workload runs twice with a scrape in between, because `rate()` needs a series to
change between two scrapes: a counter first seen at its final value reads as 0, and a
histogram first seen that way gives NaN quantiles.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway.auth import hash_key
from tests.fakes.openai_upstream import (
    FAIL_MODEL,
    UPSTREAM,
    FakeOpenAIState,
    make_openai_upstream,
)
from tests.support import chat_line, jsonl

REPO = Path(__file__).resolve().parent.parent
PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "batch-gateway.json"
UPSTREAM_KEY = "sk-upstream"
# What Grafana would put in for the dashboard's variables.
VARIABLES = {"provider": ".*", "__rate_interval": "1m"}
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Panel [refId] -> labels of a series that must be rising after the workload.
SEEN_IN_PANELS = {
    "Fallbacks / s [A]": {"from_provider": "flaky", "to_provider": "sandbox"},
    "Upstream calls / s by outcome [A]": {"provider": "flaky", "outcome": "retryable"},
    "Retries / s [A]": {"provider": "flaky", "operation": "create"},
    "Error responses / s by route and status [A]": {"route": "/v1/batches/{batch_id}"},
    "Batches ended / s by status [A]": {"provider": "flaky", "status": "completed"},
    "Requests completed / s [A]": {"provider": "sandbox", "result": "failed"},
    "File bytes / s [A]": {"direction": "download"},
    "Child batches created / s by provider and kind [A]": {"provider": "sandbox", "kind": "split"},
    "Lines re-run and healed / s [A]": {"from_provider": "sandbox", "to_provider": "flaky"},
    "Lines re-run and healed / s [B]": {"from_provider": "sandbox", "to_provider": "flaky"},
}
SHARDED = {"shard": "yes"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def substitute(expr: str) -> str:
    """Replace Grafana's `$var` / `${var}` the way the dashboard's defaults would."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES[m.group(1)], expr)


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        (f"{p['title']} [{t['refId']}]", substitute(t["expr"]))
        for p in panels
        if p["type"] != "row"
        for t in p["targets"]
    ]


def render_prometheus_config(directory: Path, target: str) -> Path:
    """The committed config, pointed at the loopback gateway and scraping every second."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(PROM / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def gateway_config(directory: Path, port: int, upstream_url: str) -> Path:
    """Sandbox at full speed, plus `flaky` (the fake upstream) that falls back to the sandbox,
    and a route that shards over the sandbox and `sandbox2` and heals on `flaky`."""
    instant = dict.fromkeys(
        ("validate_seconds", "line_seconds", "finalize_seconds", "cancel_seconds"), 0
    )
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"url": "sqlite:///./gateway.db"},
        "blobs": {"dir": "./files"},
        # The workload's key has a budget (the budget panel), and the fake's model a price.
        "auth": {
            "open": True,
            "keys": [
                {"name": "team", "key_sha256": hash_key("local"), "limits": {"max_spend_usd": 100}}
            ],
        },
        "pricing": {"flaky": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}},
        "usage": {"sweep_seconds": 0.5},
        "providers": {
            "sandbox": {"type": "sandbox", "dir": "./sandbox", **instant},
            # Two lines a batch: the sharded batch is cut to fit, into several children.
            "sandbox2": {
                "type": "sandbox",
                "dir": "./sandbox2",
                "max_batch_lines": 2,
                **instant,
            },
            "flaky": {
                "type": "openai",
                "base_url": upstream_url,
                "api_key": UPSTREAM_KEY,
                "max_retries": 1,
                "retry_backoff_seconds": 0,
                "read_timeout_seconds": 5,
            },
        },
        "routes": [
            {"match": {"metadata": {"team": "research"}}, "to": "flaky", "fallback": ["sandbox"]},
            {
                "match": {"metadata": SHARDED},
                "shard": {"across": ["sandbox", "sandbox2"]},
                # The sandbox fails lines only with 400 or 404: heal those here, so that
                # lines are re-run on `flaky`, and healed there or failed on both.
                "heal": {"retry_failed_lines_on": ["flaky"], "codes": [400]},
            },
        ],
        "default": "sandbox",
        "poller": {"interval_seconds": 0.5, "jitter": 0, "webhook_interval_seconds": 0.2},
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Prometheus:
    url: str
    http: aiohttp.ClientSession

    async def api(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    async def last_scrape(self) -> float:
        result = await self.query('timestamp(up{job="batch-gateway"})')
        return float(result[0]["value"][1]) if result else 0.0

    async def scraped_after(self, moment: float, timeout: float = 15.0) -> None:
        """Wait for a scrape that started after `moment` (wall clock)."""
        deadline = time.monotonic() + timeout
        while await self.last_scrape() <= moment:
            assert time.monotonic() < deadline, "Prometheus did not scrape the gateway"
            await asyncio.sleep(0.2)


async def wait_http(http: aiohttp.ClientSession, url: str, proc: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.returncode is None, f"{what} exited early"
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not become ready")


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def wait_terminal(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish")


async def workload_round(client: openai.AsyncOpenAI, upstream: FakeOpenAIState) -> None:
    """Sandbox batches to completion, one on `flaky`, one create that falls back, a 404,
    an upload and downloads. One line fails on each provider (the sandbox refuses a chat
    without messages, the fake upstream fails FAIL_MODEL), so request counts have failures.
    Then a sharded batch (`sharded_round`)."""
    lines = [
        *(chat_line(i) for i in range(3)),
        chat_line(3, body={"model": "gpt-4o-mini"}),
        chat_line(4, model=FAIL_MODEL),
    ]
    upload = await client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    research = {"team": "research"}

    async def create(metadata: dict[str, str] | None = None) -> Any:
        return await client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=metadata,
        )

    batches = [await create(), await create(), await create(research)]
    upstream.fail_on = "POST /v1/batches"
    upstream.fail_next = [429, 429]  # refused on the first try and the one retry: fallback
    batches.append(await create(research))
    assert upstream.fail_next == []
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_doesnotexist")
    done = [await wait_terminal(client, b.id) for b in batches]
    assert [b.status for b in done] == ["completed"] * 4
    assert all(b.request_counts.failed == 1 for b in done)
    for batch in (done[0], done[2]):  # from the sandbox and from the fake upstream
        content = await client.files.content(batch.output_file_id)
        assert content.content.count(b"\n") == 4
    # After the fallback: a heal child's create on `flaky` must not meet its 429s.
    await sharded_round(client)


async def sharded_round(client: openai.AsyncOpenAI) -> None:
    """A batch cut into children of two lines over both sandboxes. Two lines fail there
    (no messages): one is healed on `flaky`, the other (FAIL_MODEL) fails there too."""
    lines = [
        *(chat_line(i) for i in range(4)),
        chat_line(4, body={"model": "gpt-4o-mini"}),
        chat_line(5, body={"model": FAIL_MODEL}),
    ]
    upload = await client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = await client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=SHARDED,
    )
    done = await wait_terminal(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 1), done


# One process (the image's default), and `--workers 2` (prometheus-client's multiprocess mode).
@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
async def prometheus_and_gateway(
    request: pytest.FixtureRequest,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> AsyncIterator[tuple[Prometheus, openai.AsyncOpenAI, FakeOpenAIState]]:
    exe = shutil.which("prometheus")
    assert exe, "prometheus is missing: install Debian's `prometheus` package (.ci/run does)"
    upstream_server = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    gateway_port, prometheus_port = free_port(), free_port()
    config = gateway_config(tmp_path, gateway_port, str(upstream_server.make_url("/v1")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, not an installed one
    serve = (sys.executable, "-m", "gateway", "serve", "--config", str(config))
    gateway_ready = f"http://127.0.0.1:{gateway_port}/health/ready"
    prom_url = f"http://127.0.0.1:{prometheus_port}"
    logs = {"gateway": (tmp_path / "gateway.log").open("wb")}
    logs["prometheus"] = (tmp_path / "prometheus.log").open("wb")
    started: list[asyncio.subprocess.Process] = []

    async def spawn(name: str, *args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=tmp_path, env=env, stdout=logs[name], stderr=subprocess.STDOUT
        )
        started.append(proc)
        return proc

    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key="local", max_retries=0
    )
    try:
        workers = ["--workers", str(request.param)] if request.param > 1 else []
        gateway = await spawn("gateway", *serve, *workers)
        prometheus = await spawn(
            "prometheus",
            exe,
            f"--config.file={render_prometheus_config(tmp_path, f'127.0.0.1:{gateway_port}')}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        )
        await wait_http(http, gateway_ready, gateway, "gateway")
        await wait_http(http, f"{prom_url}/-/ready", prometheus, "prometheus")
        yield Prometheus(prom_url, http), client, upstream_server.app[UPSTREAM]
    finally:
        await client.close()
        await http.close()
        for proc in reversed(started):
            await stop(proc)
        for name, log in logs.items():
            log.close()
            # Shown by pytest when the test failed.
            print(f"--- {name} log ---", (tmp_path / f"{name}.log").read_text()[-6000:], sep="\n")


async def test_every_dashboard_query_and_alert_rule_works_on_real_metrics(
    prometheus_and_gateway: tuple[Prometheus, openai.AsyncOpenAI, FakeOpenAIState],
) -> None:
    prom, client, upstream = prometheus_and_gateway
    await prom.scraped_after(0)  # the target is discovered and up before the workload
    await workload_round(client, upstream)
    await prom.scraped_after(time.time())
    await workload_round(client, upstream)
    await asyncio.sleep(1.0)  # the poller's next gauge refresh
    await prom.scraped_after(time.time())

    assert [r["value"][1] for r in await prom.query('up{job="batch-gateway"}')] == ["1"]
    results: dict[str, list[dict[str, Any]]] = {}
    empty = []
    for title, expr in dashboard_queries():
        results[title] = result = await prom.query(expr)
        values = [float(r["value"][1]) for r in result]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {expr!r} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # The workload's events show where an operator would look for them.
    for title, labels in SEEN_IN_PANELS.items():
        rates = [
            float(r["value"][1]) for r in results[title] if labels.items() <= r["metric"].items()
        ]
        assert rates and rates[0] > 0, (title, labels, results[title])
    # Each round's sharded batch: six lines in children of two, one line failed everywhere.
    (average,) = results["Children per sharded batch (1h) [A]"]
    assert math.isclose(float(average["value"][1]), 3), average
    (failed,) = results["Lines failed on every provider, per hour [A]"]
    assert float(failed["value"][1]) > 0, failed

    # The provider variable lists every configured provider.
    providers = await prom.api(
        "label/provider/values", **{"match[]": "gateway_circuit_breaker_state"}
    )
    assert set(providers) == {"sandbox", "sandbox2", "flaky"}

    # Every metric the alerts and the dashboard name is one the gateway really exports,
    # which promtool's unit tests (on synthetic series) cannot tell.
    exported = set(await prom.api("label/__name__/values"))
    referenced = set(re.findall(r"\bgateway_\w+", (PROM / "alerts.yml").read_text()))
    referenced |= {m for _, e in dashboard_queries() for m in re.findall(r"\bgateway_\w+", e)}
    assert referenced - exported == set()

    await assert_rules_loaded(prom)
    alerts = await prom.api("alerts")
    assert not [a for a in alerts["alerts"] if a["labels"]["alertname"] == "GatewayDown"]


async def assert_rules_loaded(prom: Prometheus) -> None:
    """Every alert of alerts.yml is loaded and has been evaluated without error."""
    expected = {
        rule["alert"]
        for group in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    deadline = time.monotonic() + 10
    while True:
        data = await prom.api("rules", type="alert")
        rules = {r["name"]: r for g in data["groups"] for r in g["rules"]}
        evaluated = all(not r["lastEvaluation"].startswith("0001") for r in rules.values())
        if (rules.keys() == expected and evaluated) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert rules.keys() == expected
    unhealthy = {name: r.get("lastError") for name, r in rules.items() if r["health"] != "ok"}
    assert not unhealthy
