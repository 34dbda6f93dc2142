"""The fake OpenAI-compatible upstream behaves like the wire reference says."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.fakes.openai_upstream import UPSTREAM, make_openai_upstream

KEY = "sk-upstream-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


def _jsonl(*models: str) -> bytes:
    lines = [
        {
            "custom_id": f"r-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "2+2?"}]},
        }
        for i, model in enumerate(models)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


async def _upload(client: Client, content: bytes) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", content, filename="in.jsonl", content_type="application/jsonl")
    resp = await client.post("/v1/files", data=form, headers=AUTH)
    assert resp.status == 200
    return await resp.json()


async def _create(client: Client, file_id: str, **extra: Any) -> dict[str, Any]:
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **extra,
    }
    resp = await client.post("/v1/batches", json=body, headers=AUTH)
    assert resp.status == 200
    return await resp.json()


async def test_wrong_key_is_401_and_recorded(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY))
    resp = await client.get("/v1/batches/batch_x", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    assert await resp.json() == {
        "error": {
            "message": "Incorrect API key provided",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    state = client.app[UPSTREAM]
    assert state.auth_headers == ["Bearer nope"]
    assert state.requests == [("GET", "/v1/batches/batch_x")]


async def test_full_lifecycle_builds_output_and_error_files(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY))
    uploaded = await _upload(client, _jsonl("gpt-4o-mini", "fail-model", "gpt-4o-mini"))
    assert uploaded["id"].startswith("file-UP")
    assert uploaded["purpose"] == "batch" and uploaded["status"] == "processed"
    assert uploaded["expires_at"] is None and uploaded["bytes"] > 0

    batch = await _create(client, uploaded["id"], metadata={"k": "v"})
    assert batch["id"].startswith("batch_UP") and batch["status"] == "validating"
    assert batch["metadata"] == {"k": "v"}
    assert (
        batch["errors"] is None
        and batch["in_progress_at"] is None
        and batch["output_file_id"] is None
    )

    statuses = []
    for _ in range(3):
        resp = await client.get(f"/v1/batches/{batch['id']}", headers=AUTH)
        batch = await resp.json()
        statuses.append(batch["status"])
    assert statuses == ["in_progress", "finalizing", "completed"]
    assert all(
        isinstance(batch[k], int) for k in ("in_progress_at", "finalizing_at", "completed_at")
    )
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert batch["model"] == "gpt-4o-mini"
    assert batch["usage"]["total_tokens"] == 30

    resp = await client.get(f"/v1/files/{batch['output_file_id']}/content", headers=AUTH)
    assert resp.content_type == "application/octet-stream"
    out = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert [line["custom_id"] for line in out] == ["r-0", "r-2"]
    assert all(line["response"]["body"]["object"] == "chat.completion" for line in out)

    resp = await client.get(f"/v1/files/{batch['error_file_id']}/content", headers=AUTH)
    errs = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errs] == [("r-1", 400)]

    resp = await client.get(f"/v1/files/{batch['output_file_id']}", headers=AUTH)
    assert (await resp.json())["purpose"] == "batch_output"


async def test_create_rejects_unknown_file_and_endpoint(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(
        make_openai_upstream(KEY, endpoints=frozenset({"/v1/embeddings"}))
    )
    body = {
        "input_file_id": "file-missing",
        "endpoint": "/v1/embeddings",
        "completion_window": "24h",
    }
    resp = await client.post("/v1/batches", json=body, headers=AUTH)
    assert resp.status == 400
    uploaded = await _upload(client, _jsonl("m"))
    body = {
        "input_file_id": uploaded["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    resp = await client.post("/v1/batches", json=body, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "endpoint"


async def test_partial_cancel_style(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY, cancel_style="partial"))
    batch = await _create(client, (await _upload(client, _jsonl("m")))["id"])
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=AUTH)
    assert await resp.json() == {"id": batch["id"], "object": "batch", "status": "cancelled"}
    full = await (await client.get(f"/v1/batches/{batch['id']}", headers=AUTH)).json()
    assert full["status"] == "cancelled" and isinstance(full["cancelled_at"], int)


async def test_full_cancel_style(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY))
    batch = await _create(client, (await _upload(client, _jsonl("m")))["id"])
    cancelled = await (await client.post(f"/v1/batches/{batch['id']}/cancel", headers=AUTH)).json()
    assert cancelled["status"] == "cancelling" and isinstance(cancelled["cancelling_at"], int)
    after = await (await client.get(f"/v1/batches/{batch['id']}", headers=AUTH)).json()
    assert after["status"] == "cancelled"
    resp = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=AUTH)
    assert resp.status == 400


async def test_placeholders_mode(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY, placeholders=True))
    batch = await _create(client, (await _upload(client, _jsonl("m")))["id"])
    assert (
        batch["in_progress_at"] == 123
        and batch["completed_at"] == 123
        and batch["cancelled_at"] == 123
    )
    assert batch["output_file_id"] == "<string>" and batch["error_file_id"] == "<string>"
    assert not {"errors", "model", "usage"} & batch.keys()
    assert batch["created_at"] != 123


async def test_fail_next_and_list(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY, fail_next=[429, 500]))
    resp = await client.get("/v1/batches", headers=AUTH)
    assert resp.status == 429 and resp.headers["Retry-After"] == "0"
    assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
    resp = await client.get("/v1/batches", headers=AUTH)
    assert resp.status == 500 and (await resp.json())["error"]["type"] == "server_error"

    file_id = (await _upload(client, _jsonl("m")))["id"]
    ids = [(await _create(client, file_id))["id"] for _ in range(3)]
    page = await (await client.get("/v1/batches?limit=2", headers=AUTH)).json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    page = await (await client.get(f"/v1/batches?after={page['last_id']}", headers=AUTH)).json()
    assert [b["id"] for b in page["data"]] == [ids[0]] and page["has_more"] is False


async def test_metadata_is_limited_as_openai_does(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY))
    file_id = (await _upload(client, _jsonl("m")))["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    body["completion_window"] = "24h"
    too_many = {f"k{i}": "v" for i in range(17)}
    resp = await client.post("/v1/batches", json=body | {"metadata": too_many}, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"] == {
        "message": "Invalid 'metadata': too many properties. Expected an object with at most 16"
        " properties, but got an object with 17 properties instead.",
        "type": "invalid_request_error",
        "param": "metadata",
        "code": None,
    }
    for bad in ({"k" * 65: "v"}, {"k": "v" * 513}, {"k": 1}, ["k"]):
        resp = await client.post("/v1/batches", json=body | {"metadata": bad}, headers=AUTH)
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["param"] == "metadata"
    at_limits = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert (await _create(client, file_id, metadata=at_limits))["metadata"] == at_limits
    assert len(client.app[UPSTREAM].batches) == 1  # the rejected ones made nothing


async def test_files_list_pages_filters_and_orders(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_openai_upstream(KEY))
    ids = [(await _upload(client, _jsonl("m")))["id"] for _ in range(5)]
    batch = await _create(client, ids[0])
    for _ in range(3):  # to completed: one batch_output file joins the list
        await client.get(f"/v1/batches/{batch['id']}", headers=AUTH)

    async def page(query: str) -> dict[str, Any]:
        resp = await client.get(f"/v1/files?{query}", headers=AUTH)
        assert resp.status == 200
        return await resp.json()

    everything = await page("")
    assert everything["object"] == "list" and len(everything["data"]) == 6
    assert everything["data"][0]["purpose"] == "batch_output"
    assert all(isinstance(f["created_at"], int) for f in everything["data"])

    first = await page("purpose=batch&limit=2")
    assert [f["id"] for f in first["data"]] == ids[::-1][:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[4], ids[3], True)
    rest = await page(f"purpose=batch&limit=2&after={first['last_id']}")
    assert [f["id"] for f in rest["data"]] == [ids[2], ids[1]] and rest["has_more"] is True
    last = await page(f"purpose=batch&limit=2&after={rest['last_id']}")
    assert [f["id"] for f in last["data"]] == [ids[0]] and last["has_more"] is False

    ascending = await page("purpose=batch&order=asc&limit=3")
    assert [f["id"] for f in ascending["data"]] == ids[:3] and ascending["has_more"] is True
    for bad in ("limit=0", "limit=10001", "limit=x", "order=sideways"):
        resp = await client.get(f"/v1/files?{bad}", headers=AUTH)
        assert resp.status == 400, bad
