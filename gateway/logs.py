"""Structured JSON logs, each line about a request carrying its request id.

The request id lives in a ContextVar set by the request-id middleware, so every
log call made while handling a request (service, providers, store) is tagged
without passing it around.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import orjson
from aiohttp import web

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# LogRecord attributes that are not "extra" fields given by the caller.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: a traceback can hold paths and secrets.
            line["error"] = record.exc_info[0].__name__
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def route_of(request: Any) -> str:
    """The route template (`/v1/batches/{batch_id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def request_middleware(access_log: bool) -> Callable[..., Any]:
    """Give each request an id (the caller's X-Request-ID, or a new one), echo it, log it."""
    log = logging.getLogger("gateway.access")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-ID", "")
        ok = 0 < len(incoming) <= 128 and incoming.isascii() and incoming.isprintable()
        rid = incoming if ok else f"req_{secrets.token_hex(12)}"
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers["X-Request-ID"] = rid
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers["X-Request-ID"] = rid
            raise
        finally:
            if access_log:
                log.info(
                    "%s %s %s",
                    request.method,
                    route_of(request),
                    status,
                    extra={
                        "method": request.method,
                        "route": route_of(request),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            request_id.reset(token)

    return middleware
