"""The app factory: middlewares, routes, and resources with a lifetime (cleanup_ctx)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import __version__
from gateway.api import SERVICE, json_response
from gateway.api import batches as batches_api
from gateway.api import files as files_api
from gateway.auth import Authenticator
from gateway.blobs import open_blobs
from gateway.config import Config
from gateway.errors import Handler, error_middleware
from gateway.routing import Router
from gateway.service import GatewayService
from gateway.store import open_store
from providers.base import Provider
from providers.registry import build_provider

log = logging.getLogger("gateway")

CONFIG = web.AppKey("config", Config)
REQUEST_ID = web.RequestKey("request_id", str)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Echo the caller's X-Request-ID (or a new one) so a request can be traced."""
    incoming = request.headers.get("X-Request-ID", "")
    rid = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else None
    request[REQUEST_ID] = rid or f"req_{secrets.token_hex(12)}"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = request[REQUEST_ID]
        raise
    if not response.prepared:
        response.headers["X-Request-ID"] = request[REQUEST_ID]
    return response


def build_providers(config: Config) -> dict[str, Provider]:
    providers = {}
    for name, provider_config in config.providers.items():
        if provider_config.disabled_reason:
            log.warning(
                "provider %s is left out of routing: %s", name, provider_config.disabled_reason
            )
            continue
        providers[name] = build_provider(name, provider_config)
    return providers


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await open_store(config.store.url)
    try:
        blobs = await open_blobs(config.blobs)
    except BaseException:
        await store.close()
        raise
    providers = build_providers(config)
    try:
        service = GatewayService(
            store=store,
            blobs=blobs,
            providers=providers,
            router=Router(config, providers),
            limits=config.limits,
        )
        await service.reconcile_pending()
        app[SERVICE] = service
        yield
    finally:
        for provider in providers.values():
            await provider.close()
        await blobs.close()
        await store.close()


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__})


async def ready(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "providers": sorted(request.app[SERVICE].providers)})


def create_app(config: Config) -> web.Application:
    auth = Authenticator(config.auth)
    app = web.Application(
        middlewares=[request_id_middleware, error_middleware, auth.middleware()],
        client_max_size=1024 * 1024,
    )
    app[CONFIG] = config
    app.cleanup_ctx.append(_resources)
    files_api.add_routes(app)
    batches_api.add_routes(app)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    return app
