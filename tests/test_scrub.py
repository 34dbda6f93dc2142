"""Messages relayed from a provider carry none of its hosts, ports, organization and project
ids, upstream ids or keys: in error envelopes and in a Batch's `errors.data[]`."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from providers.http import HTTPProvider
from providers.transport import HTTPSettings
from tests.conftest import StartGateway
from tests.support import chat_file, make_config

KEY = "sk-proj-scrubtestkey0123456789"
Servers = Callable[..., Awaitable[TestServer]]


def leaky(host: str) -> str:
    """Everything a chatty provider puts in its messages."""
    return (
        f"Rate limit reached in organization org-AbCdEf123456 project proj_XyZ98765 "
        f"for batch_UP0123abcd (input file-UPfeed42) at {host} via 10.20.30.40:5432 "
        f"and [::1]:8080 (see https://api.internal.example:8443/v1/batches?key={KEY}), "
        f"key {KEY}, another sk-live-0123456789abcdef, upstream llm-gw.corp.example:443"
    )


SECRETS = (
    "org-AbCdEf123456",
    "proj_XyZ98765",
    "batch_UP0123abcd",
    "file-UPfeed42",
    "10.20.30.40",
    "[::1]",
    "api.internal.example",
    "8443",
    KEY,
    "sk-live-0123456789abcdef",
    "llm-gw.corp.example",
    "127.0.0.1",
)


def chatty_upstream() -> web.Application:
    """An OpenAI-compatible upstream whose every message echoes its secrets."""

    async def upload(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"id": "file-UPfeed42", "object": "file", "bytes": 1, "created_at": 1_700_000_000}
        )

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        if (body.get("metadata") or {}).get("mode") == "reject":
            message = leaky(request.host)
            error = {"message": message, "type": "invalid_request_error", "code": None}
            return web.json_response({"error": error}, status=400)
        return web.json_response(batch(request, "validating"))

    async def retrieve(request: web.Request) -> web.Response:
        return web.json_response(batch(request, "failed"))

    async def cancel(request: web.Request) -> web.Response:
        error = {"message": leaky(request.host), "type": "server_error", "code": None}
        return web.json_response({"error": error}, status=503)

    def batch(request: web.Request, status: str) -> dict[str, object]:
        failed = status == "failed"
        errors = [{"code": "invalid_request", "message": leaky(request.host), "line": 1}]
        return {
            "id": "batch_UP0123abcd",
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "status": status,
            "created_at": 1_700_000_000,
            "failed_at": 1_700_000_100 if failed else None,
            "errors": {"object": "list", "data": errors} if failed else None,
        }

    app = web.Application()
    app.router.add_post("/v1/files", upload)
    app.router.add_post("/v1/batches", create)
    app.router.add_get("/v1/batches/{batch_id}", retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)
    return app


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


@pytest.mark.parametrize("where", ["create", "batch-errors", "cancel"])
async def test_provider_messages_reach_clients_scrubbed(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path, where: str
) -> None:
    server = await aiohttp_server(chatty_upstream())
    provider = {
        "type": "openai",
        "base_url": str(server.make_url("/v1")),
        "api_key": KEY,
        "max_retries": 0,
    }
    config = make_config(
        tmp_path, providers={"chatty": provider}, default="chatty", poller={"enabled": False}
    )
    gw = await start_gateway(config)
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    metadata = {"mode": "reject"} if where == "create" else None

    async def create() -> str:
        batch = await gw.client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata=metadata,
        )
        return batch.id

    if where == "create":
        with pytest.raises(openai.BadRequestError) as info:
            await create()
        text = json.dumps(info.value.body)
        assert "Rate limit reached in organization [organization]" in text
    elif where == "batch-errors":
        failed = await gw.client.batches.retrieve(await create())
        assert failed.status == "failed" and failed.errors and failed.errors.data
        text = failed.errors.data[0].message or ""
        assert "project [project]" in text
    else:
        batch_id = await create()
        with pytest.raises(openai.InternalServerError) as err:
            await gw.client.batches.cancel(batch_id)
        text = json.dumps(err.value.body)
    assert_clean(text)
    assert_clean(b"\n".join(gw.bodies).decode())  # every body the gateway answered


def test_scrub_keeps_the_rest_of_a_message() -> None:
    provider = HTTPProvider(
        "p", frozenset(), HTTPSettings("https://api.example.com/v1"), api_key=KEY
    )
    text = provider.scrub(leaky("api.example.com"))
    assert_clean(text)
    assert "api.example.com" not in text
    assert text.startswith("Rate limit reached in organization [organization] project [project]")
    assert provider.scrub("Line 3: 'messages' is required.") == "Line 3: 'messages' is required."
