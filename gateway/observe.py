"""The one middleware for what every request reports: its id, its log line, its metrics.

The request id comes from the caller's X-Request-ID (or is made here) and is
echoed back; it lives in a ContextVar so every log line written while handling
the request carries it. Upstream wait time is summed in another ContextVar so
the gateway's own overhead (total minus waiting on providers) is measured.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.logs import Handler, request_id, route_of

log = logging.getLogger("gateway.access")

# Scrapes and probes arrive every few seconds; logging each would drown the rest.
QUIET_ROUTES = frozenset({"/metrics", "/health/live", "/health/ready"})


def observe_middleware(access_log: bool) -> Callable[..., Any]:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-ID", "")
        ok = 0 < len(incoming) <= 128 and incoming.isascii() and incoming.isprintable()
        # Request ids only need to be unique, not unguessable: the fast generator will do
        # (the OS random source costs a system call per request).
        rid = incoming if ok else f"req_{random.getrandbits(96):024x}"
        rid_token = request_id.set(rid)
        waited = [0.0]
        wait_token = metrics.upstream_wait.set(waited)
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
            elapsed = time.perf_counter() - started
            # The log line and the metrics wait for the next turn of the loop, which comes
            # after aiohttp has written the response: the client doesn't wait for them.
            # call_soon runs them in a copy of this context, so the line has the request id.
            asyncio.get_running_loop().call_soon(
                _report, request.method, route_of(request), status, elapsed, waited[0], access_log
            )
            metrics.upstream_wait.reset(wait_token)
            request_id.reset(rid_token)

    return observe


def _report(
    method: str, route: str, status: int, elapsed: float, waited: float, access_log: bool
) -> None:
    metrics.record_http(route, method, status, elapsed, waited)
    if access_log and route not in QUIET_ROUTES:
        log.info(
            "%s %s %s",
            method,
            route,
            status,
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
            },
        )
