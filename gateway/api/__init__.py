"""Thin HTTP handlers: parse the request, call the service, render the wire object."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from gateway.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMedia
from gateway.service import GatewayService

T = TypeVar("T")

SERVICE = web.AppKey("service", GatewayService)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def service(request: web.Request) -> GatewayService:
    return request.app[SERVICE]


async def idle_limited(read: Awaitable[T], seconds: float) -> T:
    """One read of the request body; a client that sends nothing for `seconds` gets 408.

    aiohttp has no per-read timeout, so without this a slow client holds a
    handler (and a partly written blob) for as long as it likes.
    """
    try:
        async with asyncio.timeout(seconds):
            return await read
    except TimeoutError:
        raise RequestTimeout(
            f"The request body stalled for more than {seconds:g} seconds."
        ) from None


async def read_json(request: web.Request) -> Any:
    """The JSON body, refused with 413 past `limits.max_request_bytes` while it streams in."""
    if request.content_type != "application/json":
        raise UnsupportedMedia("Send the request body as application/json.")
    limits = service(request).limits
    too_large = PayloadTooLarge(
        f"The request body is larger than {limits.max_request_bytes} bytes.",
        code="request_too_large",
    )
    if (request.content_length or 0) > limits.max_request_bytes:
        raise too_large
    data = bytearray()
    while chunk := await idle_limited(request.content.readany(), limits.upload_idle_seconds):
        data += chunk
        if len(data) > limits.max_request_bytes:
            raise too_large
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request.") from None


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer.", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}.", param=name)
    return value


def choice_param(request: web.Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = request.query.get(name, default)
    if value not in choices:
        raise InvalidRequest(f"'{name}' must be one of: {', '.join(choices)}.", param=name)
    return value


def cursor_param(request: web.Request) -> str | None:
    value = request.query.get("after")
    if value is not None and not (0 < len(value) <= 256):
        raise InvalidRequest("'after' must be an object id.", param="after")
    return value or None
