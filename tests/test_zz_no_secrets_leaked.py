"""No provider key, upstream URL or gateway key in any response or log line of the suite.

Named `zz` so it runs after every other module: by then `SCAN` holds every body,
header and log record of the session (see `tests/leakscan.py`). The hostile
upstream here echoes its key and URL in every error, the worst case the
gateway's scrubbing must handle, so the scan has something to find even when
this module runs alone.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.auth import hash_key
from tests.conftest import StartGateway
from tests.leakscan import SCAN, LeakScan
from tests.support import chat_file, make_config

HOSTILE_KEY = "sk-hostile-upstream-key-987"
CLIENT_KEY = "gw-client-key-for-leak-scan"


def echoing_upstream(status: int) -> web.Application:
    """Every answer is an error that repeats the caller's key and the URL it was called on."""

    async def echo(request: web.Request) -> web.Response:
        message = (
            f"denied {request.headers.get('Authorization')} at {request.url} (key {HOSTILE_KEY})"
        )
        body = {"error": {"message": message, "type": "x", "param": None, "code": None}}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_hostile_upstream_errors_are_scrubbed(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    status: int,
) -> None:
    upstream = await aiohttp_server(echoing_upstream(status))
    provider = {
        "type": "openai",
        "base_url": str(upstream.make_url("/v1")),
        "api_key": HOSTILE_KEY,
        "max_retries": 0,
        "retry_backoff_seconds": 0,
    }
    config = make_config(
        tmp_path,
        auth={"keys": [{"name": "scan", "key_sha256": hash_key(CLIENT_KEY)}]},
        providers={"hostile": provider},
        default="hostile",
    )
    gw = await start_gateway(config, api_key=CLIENT_KEY)
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert info.value.status_code >= 400
    assert HOSTILE_KEY not in info.value.message and "127.0.0.1" not in info.value.message


async def test_dead_upstream_is_not_named(
    start_gateway: StartGateway, tmp_path: Path, unused_tcp_port: int
) -> None:
    provider = {
        "type": "openai",
        "base_url": f"http://127.0.0.1:{unused_tcp_port}/v1",
        "api_key": HOSTILE_KEY,
        "max_retries": 0,
    }
    config = make_config(tmp_path, providers={"dead": provider}, default="dead")
    gw = await start_gateway(config)
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    with pytest.raises(openai.APIStatusError) as info:
        await gw.client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert info.value.status_code == 503


def test_the_scanner_finds_a_planted_secret() -> None:
    scan = LeakScan()
    scan.register("sk-planted-secret", "planted key")
    scan.saw("log x", "all fine")
    assert scan.leaks() == []
    scan.saw("response to GET /v1/files", '{"error": {"message": "bad sk-planted-secret"}}')
    assert len(scan.leaks()) == 1 and "planted key" in scan.leaks()[0]


def test_no_secret_in_any_response_or_log_line_of_the_session() -> None:
    logging.getLogger("gateway.test").info("scan sees log records")
    assert SCAN.gateways >= 4, "the gateways of this session registered their secrets"
    assert HOSTILE_KEY in SCAN.secrets and CLIENT_KEY in SCAN.secrets
    assert any("scan sees log records" in text for _, text in SCAN.seen)
    assert any(where.startswith("response to") for where, _ in SCAN.seen)
    assert SCAN.leaks() == []
