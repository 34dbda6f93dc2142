"""A fake synchronous OpenAI-compatible server (what vLLM or Ollama serve): a real aiohttp app.

    server = await aiohttp_server(make_sync_upstream(latency=0.05))
    base_url = str(server.make_url("/v1"))
    state = server.app[SYNC]

`POST /v1/chat/completions`, `/v1/embeddings` and `/v1/completions` answer like OpenAI
(with the sandbox provider's deterministic bodies).
It records every request it received in `served` (keyed by the request's text: the last
message, the input or the prompt), measures `peak` concurrent requests, and can be made
to misbehave: `latency` per request, `fail_next` statuses (429 comes with `Retry-After`),
and the model `fail-model` always gets a 400.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from providers.sandbox import result_body
from tests.fakes.openai_upstream import error_response

FAIL_MODEL = "fail-model"


@dataclass
class FakeSyncState:
    api_key: str | None = None
    latency: float = 0.0
    fail_next: list[int] = field(default_factory=list)
    retry_after: str = "0"
    served: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    active: int = 0
    peak: int = 0


SYNC = web.AppKey("sync", FakeSyncState)


def request_text(path: str, body: dict[str, Any]) -> str:
    """What identifies a request: its last message, its input or its prompt."""
    if path.endswith("/chat/completions"):
        return str(body["messages"][-1]["content"])
    value = body.get("input" if path.endswith("/embeddings") else "prompt")
    return value if isinstance(value, str) else json.dumps(value)


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[SYNC]
    if state.api_key is not None and request.headers.get("Authorization") != (
        f"Bearer {state.api_key}"
    ):
        return error_response(401, "Incorrect API key provided")
    body = await request.json()
    state.served.append(request_text(request.path, body))
    state.times.append(time.monotonic())
    state.active += 1
    state.peak = max(state.peak, state.active)
    try:
        if state.latency:
            await asyncio.sleep(state.latency)
        if state.fail_next:
            status = state.fail_next.pop(0)
            response = error_response(status, f"Injected failure ({status})")
            if status == 429:
                response.headers["Retry-After"] = state.retry_after
            return response
        if body.get("model") == FAIL_MODEL:
            return error_response(
                400, f"The model `{FAIL_MODEL}` does not exist.", code="model_not_found"
            )
        return await handler(request)
    finally:
        state.active -= 1


async def answer(request: web.Request) -> web.Response:
    """The body OpenAI's endpoint would return (the sandbox's deterministic ones)."""
    body = await request.json()
    seed = secrets.token_hex(6)
    result = result_body(request.path, body, seed=seed, created=int(time.time()))
    return web.json_response(result, headers={"x-request-id": f"req_{seed}"})


def make_sync_upstream(**state_options: Any) -> web.Application:
    """The fake; `state_options` are FakeSyncState fields (api_key, latency, fail_next, ...)."""
    app = web.Application(middlewares=[_gate])
    app[SYNC] = FakeSyncState(**state_options)
    paths = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")
    app.add_routes([web.post(path, answer) for path in paths])
    return app
