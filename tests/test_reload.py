"""Config reload (SIGHUP): the new config takes over, a bad one is refused, nothing dropped."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway.app import reload_config
from tests.conftest import StartGateway
from tests.fakes.openai_upstream import UPSTREAM, make_openai_upstream
from tests.support import chat_file
from tests.test_cli_demo import free_port, wait_ready

UPSTREAM_KEY = "sk-reload-upstream-key"
BASE = {
    "store": {"url": "sqlite:///./gw.db"},
    "blobs": {"dir": "./files"},
    "providers": {"sandbox": {"type": "sandbox", "dir": "./sbx"}},
    "default": "sandbox",
    "poller": {"enabled": False},
}


def write(path: Path, data: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump(data))


async def test_reload_swaps_providers_and_keeps_in_flight_requests(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await aiohttp_server(make_openai_upstream(UPSTREAM_KEY))
    slow = {"type": "openai", "base_url": str(upstream.make_url("/v1")), "api_key": UPSTREAM_KEY}
    path = tmp_path / "config.yaml"
    write(path, {**BASE, "providers": {"slow": slow}, "default": "slow"})
    from gateway.config import load_config

    gw = await start_gateway(load_config(path), config_path=path)
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch")
    upstream.app[UPSTREAM].latency = 0.5
    in_flight = asyncio.create_task(
        gw.client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    )
    await asyncio.sleep(0.1)

    write(path, {**BASE, "providers": {"slow": slow, "sandbox": BASE["providers"]["sandbox"]}})
    assert reload_config(gw.server.app) is True
    batch = await in_flight  # started on the old config, finished after the swap
    assert batch.status == "validating"
    async with gw.http.get(gw.url("/health/ready")) as resp:
        assert (await resp.json())["providers"] == ["sandbox", "slow"]
    again = await gw.client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    record = await gw.service.store.get_batch(again.id)
    assert record is not None and record.provider == "sandbox"  # the new default

    path.write_text("providers: {x: {type: nope}}\ndefault: x\n")
    with caplog.at_level(logging.ERROR, logger="gateway"):
        assert reload_config(gw.server.app) is False
    assert "config reload refused" in caplog.text and "providers.x" in caplog.text
    async with gw.http.get(gw.url("/health/ready")) as resp:
        assert (await resp.json())["providers"] == ["sandbox", "slow"]


def ready_providers(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as resp:
        return list(orjson.loads(resp.read())["providers"])


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write(path, BASE)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", server)
        assert ready_providers(port) == ["sandbox"]
        extra = {"type": "sandbox", "dir": "./extra"}
        write(path, {**BASE, "providers": {**BASE["providers"], "extra": extra}})
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while ready_providers(port) != ["extra", "sandbox"]:
            assert time.monotonic() < deadline, "reload did not take effect"
            time.sleep(0.05)
        path.write_text("default: [\n")
        os.kill(server.pid, signal.SIGHUP)
        time.sleep(0.3)
        assert server.poll() is None  # still running, on the old config
        assert ready_providers(port) == ["extra", "sandbox"]
    finally:
        server.terminate()
        log = server.communicate(timeout=20)[0].decode()
    assert "config reloaded" in log and "config reload refused" in log
