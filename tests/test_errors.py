"""Every error is OpenAI's envelope with the right status; nothing half-stored."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.auth import hash_key
from tests.conftest import Gateway, StartGateway
from tests.support import chat_file, make_config


def assert_envelope(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


async def request(gw: Gateway, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with gw.http.request(method, gw.url(path), **kwargs) as resp:
        assert resp.headers["X-Request-ID"]
        return resp.status, await resp.json()


async def test_unknown_route_and_method(gateway: Gateway) -> None:
    status, body = await request(gateway, "GET", "/v1/nothing-here")
    assert status == 404
    assert assert_envelope(body)["code"] == "unknown_url"
    status, body = await request(gateway, "PUT", "/v1/batches")
    assert status == 405
    assert_envelope(body)


async def test_create_body_errors(gateway: Gateway) -> None:
    uploaded = await gateway.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch"
    )
    good = {
        "input_file_id": uploaded.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    cases: list[tuple[Any, int, str | None]] = [
        ({**good, "completion_window": "48h"}, 400, "completion_window"),
        ({**good, "endpoint": "/v1/nope"}, 400, "endpoint"),
        ({**good, "endpoint": "/v1/embeddings"}, 400, "endpoint"),  # file is chat
        ({**good, "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
        ({**good, "metadata": {"k" * 65: "v"}}, 400, "metadata"),
        ({**good, "metadata": {"k": "v" * 513}}, 400, "metadata"),
        ({**good, "unexpected": 1}, 400, "unexpected"),
        ({k: v for k, v in good.items() if k != "endpoint"}, 400, "endpoint"),
        ({**good, "input_file_id": "file-doesnotexist000000000000"}, 404, "input_file_id"),
        ({**good, "output_expires_after": {"anchor": "created_at", "seconds": 1}}, 400, None),
        ([1, 2], 400, None),
    ]
    for payload, status, param in cases:
        got, body = await request(gateway, "POST", "/v1/batches", json=payload)
        assert got == status, (payload, body)
        error = assert_envelope(body)
        if param:
            assert error["param"] and error["param"].startswith(param), (payload, error)

    got, body = await request(
        gateway, "POST", "/v1/batches", data=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert got == 400 and "parse" in assert_envelope(body)["message"]
    got, body = await request(gateway, "POST", "/v1/batches", data=b"x=1")
    assert got == 415
    assert [b async for b in gateway.client.batches.list()] == []


async def test_metadata_at_the_limits_is_accepted(gateway: Gateway) -> None:
    uploaded = await gateway.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    batch = await gateway.client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    assert batch.metadata == metadata


async def test_unknown_ids_are_404(gateway: Gateway) -> None:
    client = gateway.client
    for call in (
        client.batches.retrieve("batch_nope"),
        client.batches.cancel("batch_nope"),
        client.files.retrieve("file-nope"),
        client.files.content("file-nope"),
        client.files.delete("file-nope"),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            await call
        assert assert_envelope(info.value.body and {"error": info.value.body})


async def test_cancel_of_a_terminal_batch_is_rejected(gateway: Gateway) -> None:
    from tests.test_flow_sdk import wait_terminal

    uploaded = await gateway.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    batch = await gateway.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await wait_terminal(gateway.client, batch.id)
    with pytest.raises(openai.BadRequestError) as info:
        await gateway.client.batches.cancel(batch.id)
    assert "completed" in info.value.message


async def test_keys_map_to_tenants(start_gateway: StartGateway, tmp_path: Path) -> None:
    auth = {
        "keys": [
            {"name": "team-a", "key_sha256": hash_key("key-a")},
            {"name": "team-b", "key_sha256": hash_key("key-b")},
        ]
    }
    config = make_config(tmp_path, auth=auth)
    a = await start_gateway(config, api_key="key-a")
    uploaded = await a.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )

    status, body = await request(a, "GET", "/v1/files")
    assert status == 401 and assert_envelope(body)["code"] == "invalid_api_key"
    status, body = await request(
        a, "GET", "/v1/files", headers={"Authorization": "Bearer wrong-key"}
    )
    assert status == 401 and "wrong-key" not in str(body)
    status, _ = await request(a, "GET", "/health/live")
    assert status == 200

    b_client = openai.AsyncOpenAI(base_url=a.base_url, api_key="key-b", max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError):
            await b_client.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            await b_client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert [f async for f in b_client.files.list()] == []
    finally:
        await b_client.close()
