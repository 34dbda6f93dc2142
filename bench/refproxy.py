"""A bare aiohttp pass-through for `GET /v1/batches/{id}`: the floor for item 1's added latency.

No store, no middleware, no parsing: one aiohttp server, one shared aiohttp
client session (uvloop when installed). Whatever the gateway adds over this is
its own cost; what this adds over direct is the extra hop and process.

    python -m bench.refproxy --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def retrieve(request: web.Request) -> web.Response:
    url = f"{request.app[UPSTREAM]}/v1/batches/{request.match_info['batch_id']}"
    async with request.app[SESSION].get(url) as resp:
        body = await resp.read()
    return web.Response(body=body, status=resp.status, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def _session(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    yield
    await app[SESSION].close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_get("/v1/batches/{batch_id}", retrieve)
    app.router.add_get("/health", health)
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
