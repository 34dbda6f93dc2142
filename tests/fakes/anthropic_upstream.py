"""A fake Anthropic Message Batches API: a real aiohttp app.

    server = await aiohttp_server(make_anthropic_upstream("sk-ant-test"))
    base_url = str(server.make_url(""))   # no /v1: the adapter adds the paths
    state = server.app[ANTHROPIC]

A batch ends after `polls_to_end` retrieves. What each request gets, by its params:
model `fail-model` -> `errored` (invalid_request_error); params with `tools` -> a
`tool_use` reply; otherwise the text `fake reply to <custom_id>`. A cancelled batch ends at
the next retrieve with only its first request run and the rest `canceled`; with
`expire=True` a batch ends at its `expires_at` with the first request run and the rest
`expired`. Results are streamed
in small chunks, so lines straddle chunk boundaries. Injectable: `latency` (seconds per
call), and the faults of `tests.fakes.faults` (`fail_next`, `fail_on`, `fault_rates`, ...;
statuses are answered with Anthropic's error body, deferred faults replay creates and
cancels). `GET /v1/messages/batches` lists newest first with `limit`, `before_id` and
`after_id`; `preload_batches` and `background_creates_per_second` make a busy account.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes import faults
from tests.fakes.faults import Captured, FaultState, Ledger, Replayer

Json = dict[str, Any]

FAIL_MODEL = "fail-model"
VERSION = "2023-06-01"
# The dated API versions this fake answers (2026-10-21: the default of the 2.x SDKs).
VERSIONS = frozenset({VERSION, "2026-10-21"})
_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
LIST_MAX = 1000


@dataclass
class FakeAnthropicState(FaultState):
    api_key: str
    batches: Ledger = field(default_factory=Ledger)
    # Every request as (method, path, x-api-key, anthropic-version).
    calls: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    latency: float = 0.0
    polls_to_end: int = 1
    expire: bool = False


ANTHROPIC = web.AppKey("anthropic", FakeAnthropicState)


def _rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def error_response(status: int, message: str) -> web.Response:
    error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    body = {"type": "error", "error": error, "request_id": "req_" + secrets.token_hex(8)}
    return web.json_response(body, status=status)


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[ANTHROPIC]
    key, version = request.headers.get("x-api-key"), request.headers.get("anthropic-version")
    state.calls.append((request.method, request.path, key, version))
    if state.latency:
        await asyncio.sleep(state.latency)
    if key != state.api_key:
        return error_response(401, "invalid x-api-key")
    if version not in VERSIONS:
        return error_response(400, "anthropic-version header is required")
    return await faults.serve(
        state,
        request,
        lambda: handler(request),
        error=error_response,
        replayers=REPLAYERS,
        label="Injected failure",
    )


def _public(batch: Json) -> Json:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _invalid(requests: Any) -> str | None:
    if not isinstance(requests, list) or not requests:
        return "requests: must be a non-empty list"
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            return f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$"
        if custom_id in seen:
            return f"requests.{i}.custom_id: duplicate"
        seen.add(custom_id)
        params = item.get("params")
        if not isinstance(params, dict) or not isinstance(params.get("max_tokens"), int):
            return f"requests.{i}.params.max_tokens: Field required"
        if not isinstance(params.get("messages"), list) or "model" not in params:
            return f"requests.{i}.params: model and messages are required"
    return None


async def create_batch(request: web.Request) -> web.Response:
    return _create_batch(request.app[ANTHROPIC], await request.read())


def _create_batch(state: FakeAnthropicState, raw: bytes) -> web.Response:
    """Validate a create body and store the batch; replayed as is by deferred faults."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_response(400, "the body is not JSON")
    requests = body.get("requests") if isinstance(body, dict) else None
    if (problem := _invalid(requests)) is not None:
        return error_response(400, problem)
    assert isinstance(requests, list)  # _invalid checked it
    return web.json_response(_public(_new_batch(state, requests, datetime.now(UTC))))


def _new_batch(state: FakeAnthropicState, requests: list[Json], created: datetime) -> Json:
    batch_id = "msgbatch_" + secrets.token_hex(12)
    state.batches[batch_id] = {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0}
        | {"canceled": 0, "expired": 0},
        "ended_at": None,
        "created_at": _rfc3339(created),
        "expires_at": _rfc3339(created + timedelta(hours=24)),
        "archived_at": None,
        "cancel_initiated_at": None,
        "results_url": None,
        "_requests": requests,
        "_polls": 0,
        "_results": [],
    }
    return state.batches[batch_id]


def _add_unrelated(state: FakeAnthropicState, created_at: int, tag: str | None) -> None:
    """Someone else's batch on the account (Anthropic batches carry no metadata: no tag)."""
    messages = [{"role": "user", "content": "hi"}]
    params = {"model": "claude-x", "max_tokens": 16, "messages": messages}
    created = datetime.fromtimestamp(created_at, UTC)
    _new_batch(state, [{"custom_id": "other-0", "params": params}], created)


def _message(custom_id: str, params: Json) -> Json:
    content: list[Json] = [{"type": "text", "text": f"fake reply to {custom_id}"}]
    stop_reason = "end_turn"
    if params.get("tools"):
        tool = params["tools"][0]["name"]
        content.append({"type": "tool_use", "id": "toolu_1", "name": tool, "input": {"q": 1}})
        stop_reason = "tool_use"
    return {
        "id": "msg_" + secrets.token_hex(8),
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5}
        | {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 2},
    }


def _outcome(item: Json, kind: str) -> Json:
    if kind != "succeeded":
        return {"type": kind}
    params = item["params"]
    if params["model"] == FAIL_MODEL:
        error = {"type": "invalid_request_error", "message": f"model: {FAIL_MODEL} not found"}
        wrapper = {"type": "error", "error": error, "request_id": "req_" + secrets.token_hex(8)}
        return {"type": "errored", "error": wrapper}
    return {"type": "succeeded", "message": _message(item["custom_id"], params)}


def _end(request: web.Request, batch: Json, expire: bool) -> None:
    cancelled = batch["cancel_initiated_at"] is not None
    results = []
    for i, item in enumerate(batch["_requests"]):
        stopped = "canceled" if cancelled else "expired" if expire else None
        kind = stopped if stopped and i > 0 else "succeeded"  # the first one always ran
        results.append({"custom_id": item["custom_id"], "result": _outcome(item, kind)})
    counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
    for result in results:
        counts[result["result"]["type"]] += 1
    base = str(request.url.origin())
    batch.update(
        processing_status="ended",
        request_counts=counts,
        ended_at=batch["expires_at"] if expire else _rfc3339(datetime.now(UTC)),
        results_url=f"{base}/v1/messages/batches/{batch['id']}/results",
        _results=results,
    )


def _batch(request: web.Request) -> Json:
    batch = request.app[ANTHROPIC].batches.get(request.match_info["batch_id"])
    if batch is None:
        raise web.HTTPNotFound(
            text=orjson.dumps({"type": "error", "error": {"type": "not_found_error"}}).decode(),
            content_type="application/json",
        )
    return batch


async def retrieve_batch(request: web.Request) -> web.Response:
    state = request.app[ANTHROPIC]
    batch = _batch(request)
    if batch["processing_status"] != "ended":
        batch["_polls"] += 1
        if batch["processing_status"] == "canceling" or batch["_polls"] >= state.polls_to_end:
            _end(request, batch, state.expire)
    return web.json_response(_public(batch))


async def cancel_batch(request: web.Request) -> web.Response:
    batch = _batch(request)
    _cancel(batch)
    return web.json_response(_public(batch))


def _cancel(batch: Json) -> None:
    if batch["processing_status"] == "in_progress":
        batch.update(processing_status="canceling")
        batch["cancel_initiated_at"] = _rfc3339(datetime.now(UTC))


async def list_batches(request: web.Request) -> web.Response:
    """Newest first; `limit` (1..1000, default 20), `before_id` / `after_id` cursors."""
    state, query = request.app[ANTHROPIC], request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= LIST_MAX:
        return error_response(400, f"limit: Input should be between 1 and {LIST_MAX}")
    before, after = query.get("before_id"), query.get("after_id")
    if before and after:
        return error_response(400, "before_id and after_id cannot both be given")
    page, has_more = state.batches.page(limit, before=before or None, after=after or None)
    first_id, last_id = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    body = {"data": [_public(b) for b in page], "has_more": has_more}
    return web.json_response(body | {"first_id": first_id, "last_id": last_id})


def _replay_create(state: FakeAnthropicState, call: Captured) -> None:
    _create_batch(state, call.body)  # an invalid body makes no batch, late or not


def _replay_cancel(state: FakeAnthropicState, call: Captured) -> None:
    if (batch := state.batches.get(call.match_info["batch_id"])) is not None:
        _cancel(batch)


REPLAYERS: dict[str, Replayer[FakeAnthropicState]] = {
    "POST /v1/messages/batches": _replay_create,
    "POST /v1/messages/batches/{batch_id}/cancel": _replay_cancel,
}


async def results(request: web.Request) -> web.StreamResponse:
    batch = _batch(request)
    if batch["processing_status"] != "ended":
        return error_response(400, "results are available once the batch has ended")
    response = web.StreamResponse(headers={"content-type": "application/binary"})
    await response.prepare(request)
    for result in batch["_results"]:
        line = orjson.dumps(result) + b"\n"
        half = len(line) // 2
        await response.write(line[:half])
        await response.write(line[half:])
    await response.write_eof()
    return response


def make_anthropic_upstream(api_key: str, **state_options: Any) -> web.Application:
    """The fake; `state_options` are FakeAnthropicState fields (latency, expire, ...)."""
    app = web.Application(middlewares=[_gate])
    state = app[ANTHROPIC] = FakeAnthropicState(api_key=api_key, **state_options)
    app.cleanup_ctx.append(faults.lifecycle(state, lambda at, tag: _add_unrelated(state, at, tag)))
    app.add_routes(
        [
            web.post("/v1/messages/batches", create_batch),
            web.get("/v1/messages/batches", list_batches),
            web.get("/v1/messages/batches/{batch_id}", retrieve_batch),
            web.post("/v1/messages/batches/{batch_id}/cancel", cancel_batch),
            web.get("/v1/messages/batches/{batch_id}/results", results),
        ]
    )
    return app
