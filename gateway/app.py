"""The app factory: middlewares, routes, and resources with a lifetime (cleanup_ctx)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import __version__, instance, metrics, openapi
from gateway.api import SERVICE, json_response
from gateway.api import batches as batches_api
from gateway.api import files as files_api
from gateway.auth import Authenticator
from gateway.blobs import open_blobs
from gateway.config import Config, ConfigError, load_config
from gateway.errors import error_middleware
from gateway.keeper import OutputKeeper
from gateway.limits import StoreWindow
from gateway.observe import observe_middleware
from gateway.poller import Poller
from gateway.routing import Router
from gateway.service import GatewayService
from gateway.store import open_store
from gateway.webhooks import WebhookSender
from providers.base import Provider
from providers.registry import build_provider
from providers.resilience import Policy, ResilientProvider

log = logging.getLogger("gateway")

SERVICE_CONFIG = web.AppKey("service_config", Config)
CONFIG_PATH = web.AppKey("config_path", Path)
_BACKGROUND = web.AppKey("background", set[asyncio.Task[None]])
_RETIRED = web.AppKey("retired", list[Provider])
PRIMARY = web.AppKey("primary", bool)
AUTH = web.AppKey("auth", Authenticator)
POLLER = web.AppKey("poller", Poller)

# Passed to aiohttp's server (run_app and the tests): request lines up to 16 KiB reach
# the handlers, so an over-long id gets the JSON error envelope rather than aiohttp's
# plain-text 400.
SERVER_ARGS: dict[str, Any] = {"max_line_size": 16 * 1024, "max_field_size": 16 * 1024}

# How long replaced providers stay open for calls that were already running.
RELOAD_GRACE_SECONDS = 120.0


def build_providers(config: Config) -> dict[str, ResilientProvider]:
    providers = {}
    for name, pc in config.providers.items():
        if pc.disabled_reason:
            log.warning("provider %s is left out of routing: %s", name, pc.disabled_reason)
            continue
        policy = Policy(
            max_retries=pc.max_retries,
            backoff=pc.retry_backoff_seconds,
            max_backoff=pc.retry_max_backoff_seconds,
            max_concurrency=pc.max_concurrency,
            breaker_failures=pc.breaker_failures,
            breaker_cooldown=pc.breaker_cooldown_seconds,
        )
        providers[name] = ResilientProvider(
            build_provider(name, pc), policy, observer=metrics.UpstreamMetrics()
        )
    metrics.initialize(providers)
    return providers


async def _close_later(retired: list[Provider], providers: list[Provider], delay: float) -> None:
    await asyncio.sleep(delay)
    for provider in providers:
        retired.remove(provider)
        await provider.close()


def apply_config(app: web.Application, config: Config) -> None:
    """Swap providers, routes, keys and limits of a running gateway.

    The store, blob directory and listen address are fixed for the process
    lifetime; a change to them is logged and takes effect on restart.
    """
    service = app[SERVICE]
    old = service.config
    for what, before, after in (
        ("store", old.store, config.store),
        ("blobs", old.blobs, config.blobs),
        ("server", old.server, config.server),
    ):
        if before != after:
            log.warning("config reload: %s changes need a restart; kept the running one", what)
    replaced = list(service.providers.values())
    app[_RETIRED].extend(replaced)
    providers = build_providers(config)
    service.reconfigure(config, providers, Router(config, providers))
    app[AUTH].configure(config.auth)
    poller = app[POLLER]
    poller.config = config.poller
    poller.webhooks.webhooks = config.webhooks
    task = asyncio.create_task(_close_later(app[_RETIRED], replaced, RELOAD_GRACE_SECONDS))
    app[_BACKGROUND].add(task)
    task.add_done_callback(app[_BACKGROUND].discard)


def reload_config(app: web.Application) -> bool:
    """Re-read the config file; a bad file is refused and the running config kept."""
    path = app[CONFIG_PATH]
    try:
        config = load_config(path)
    except ConfigError as exc:
        metrics.RELOADS.labels("failure").inc()
        log.error("config reload refused, keeping the running config: %s", exc)
        return False
    apply_config(app, config)
    metrics.RELOADS.labels("success").inc()
    log.info("config reloaded from %s", path)
    return True


async def _resources(app: web.Application) -> AsyncIterator[None]:
    config = app[SERVICE_CONFIG]
    store = await open_store(config.store.url)
    app[AUTH].limiter = StoreWindow(store)  # limits shared by workers and replicas
    try:
        blobs = await open_blobs(config.blobs)
    except BaseException:
        await store.close()
        raise
    me = instance.start()
    pc = config.poller
    await store.register_instance(me)
    # A predecessor that is provably gone (same host, pid gone) hands over at once.
    crashed = await instance.reap(store, time.time(), pc.instance_timeout_seconds)
    providers = build_providers(config)
    service = GatewayService(
        store=store,
        blobs=blobs,
        providers=providers,
        router=Router(config, providers),
        config=config,
        events=metrics.BatchMetrics(),
        instance_id=me.id,
    )
    webhooks = WebhookSender(store, config.webhooks)
    poller = Poller(service, pc, webhooks, owner=me.id)
    if crashed or await store.pending_batches():
        poller.repair_soon()  # what a crash left behind is repaired at once
    app[SERVICE] = service
    app[POLLER] = poller
    app[_BACKGROUND] = background = set()
    retired: list[Provider] = []
    app[_RETIRED] = retired
    try:
        background.add(
            asyncio.create_task(
                instance.keep_alive(store, me, pc.heartbeat_seconds, pc.instance_timeout_seconds)
            )
        )
        if app[PRIMARY] and not pc.enabled:
            # Without a poller nothing else settles what a predecessor left; in the
            # background, so that a busy provider account does not delay serving.
            background.add(asyncio.create_task(_settle(service)))
        if config.poller.enabled and app[PRIMARY]:
            background.add(asyncio.create_task(poller.run()))
        if config.blobs.keep_provider_outputs and app[PRIMARY]:
            keeper = OutputKeeper(service, poller.owner, config.poller.lease_seconds)
            background.add(asyncio.create_task(keeper.run()))
        loop = asyncio.get_running_loop()
        if CONFIG_PATH in app:
            with suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, reload_config, app)
        yield
    finally:
        with suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in background:
            task.cancel()
        for task in list(background):
            with suppress(asyncio.CancelledError):
                await task
        await poller.stop()
        await webhooks.close()
        for provider in [*service.providers.values(), *retired]:
            await provider.close()
        await blobs.close()
        instance.stop(me.id)
        with suppress(Exception):  # the store may be failing; then the heartbeat runs out
            await store.forget_instance(me.id)
        await store.close()


async def _settle(service: GatewayService) -> None:
    await service.settle_pending()


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "version": __version__, "pid": os.getpid()})


async def ready(request: web.Request) -> web.Response:
    providers = sorted(request.app[SERVICE].providers)
    return json_response({"status": "ok", "providers": providers, "pid": os.getpid()})


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi.document())


def create_app(
    config: Config, *, config_path: Path | None = None, primary: bool = True
) -> web.Application:
    """`config_path` enables reload on SIGHUP (the file is re-read from there).

    Only the primary process (worker 0) runs the poller, reconciliation and webhooks.
    """
    auth = Authenticator(config.auth)
    app = web.Application(
        middlewares=[
            observe_middleware(config.logging.access_log),
            error_middleware,
            auth.middleware(),
        ],
        client_max_size=1024 * 1024,
    )
    app[SERVICE_CONFIG] = config
    app[PRIMARY] = primary
    app[AUTH] = auth
    if config_path is not None:
        app[CONFIG_PATH] = config_path
    app.cleanup_ctx.append(_resources)
    files_api.add_routes(app)
    batches_api.add_routes(app)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics.metrics_handler)
    app.router.add_get("/openapi.json", openapi_json)
    return app
