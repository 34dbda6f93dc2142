"""Thin HTTP handlers: parse the request, call the service, render the wire object."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.service import GatewayService

SERVICE = web.AppKey("service", GatewayService)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def service(request: web.Request) -> GatewayService:
    return request.app[SERVICE]


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
