"""/v1/batches: create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway import idempotency
from gateway.api import cursor_param, int_param, json_response, read_json, service
from gateway.auth import tenant_of
from gateway.errors import InvalidRequest
from gateway.routing import PROVIDER_HEADER
from gateway.wire import (
    DEFAULT_BATCHES_PAGE,
    MAX_BATCHES_PAGE,
    CreateBatchBody,
    invalid_request,
    list_object,
)

STALE_HEADER = "X-Gateway-Stale"


async def create(request: web.Request) -> web.Response:
    key = idempotency.key_of(request)
    data = await read_json(request)
    provider_header = request.headers.get(PROVIDER_HEADER)
    if key is None:
        return await _create(request, data, provider_header)
    # Failures before this point (bad header, unreadable body) never touch the key.
    return await idempotency.once(
        service(request).store,
        tenant_of(request),
        key,
        idempotency.CREATE_BATCH,
        lambda _attempt: _create(request, data, provider_header),
        fingerprint=idempotency.batch_fingerprint(data, provider_header),
    )


async def _create(request: web.Request, data: Any, provider_header: str | None) -> web.Response:
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        body = CreateBatchBody.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    created = await service(request).create_batch(
        tenant_of(request), body, provider_header=provider_header
    )
    return json_response(created)


async def retrieve(request: web.Request) -> web.Response:
    view = await service(request).retrieve_batch(tenant_of(request), request.match_info["batch_id"])
    if view.body is not None:
        return web.Response(body=view.body, content_type="application/json")
    headers = {STALE_HEADER: "true", "Warning": '110 - "Response is Stale"'} if view.stale else None
    return json_response(view.object, headers=headers)


async def list_batches(request: web.Request) -> web.Response:
    page = await service(request).list_batches(
        tenant_of(request),
        after=cursor_param(request),
        limit=int_param(request, "limit", DEFAULT_BATCHES_PAGE, 1, MAX_BATCHES_PAGE),
    )
    return json_response(list_object([r.object for r in page.data], page.has_more))


async def cancel(request: web.Request) -> web.Response:
    obj = await service(request).cancel_batch(tenant_of(request), request.match_info["batch_id"])
    return json_response(obj)
