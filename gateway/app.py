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
from gateway.accounting import Accountant
from gateway.api import SERVICE, json_response
from gateway.api.routes import add_routes
from gateway.auth import Authenticator
from gateway.blobs import Blobs, open_blobs
from gateway.config import Config, ConfigError, load_config
from gateway.errors import error_middleware
from gateway.keeper import OutputKeeper
from gateway.limits import StoreWindow
from gateway.observe import observe_middleware
from gateway.poller import Poller
from gateway.provider_state import StoreState
from gateway.routing import Router
from gateway.service import GatewayService
from gateway.store import Store, open_store
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
STORE = web.AppKey("store", Store)
BLOBS = web.AppKey("blobs", Blobs)
INSTANCE = web.AppKey("instance", instance.Instance)
_PROVIDERS = web.AppKey("providers", dict[str, ResilientProvider])
_CRASHED = web.AppKey("crashed", bool)

# Passed to aiohttp's server (run_app and the tests): request lines up to 16 KiB reach
# the handlers, so an over-long id gets the JSON error envelope rather than aiohttp's
# plain-text 400.
SERVER_ARGS: dict[str, Any] = {"max_line_size": 16 * 1024, "max_field_size": 16 * 1024}

# How long replaced providers stay open for calls that were already running.
RELOAD_GRACE_SECONDS = 120.0


def build_providers(
    config: Config, store: Store, blobs: Blobs, owner: str
) -> dict[str, ResilientProvider]:
    """The adapters of `config`, each keeping its state in `store` and its bytes in `blobs`
    (never on local disk), wrapped in the retry, breaker and metrics layer."""
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
        state = StoreState(store, name, owner)
        adapter = build_provider(name, pc, state=state, blobs=blobs)
        providers[name] = ResilientProvider(adapter, policy, observer=metrics.UpstreamMetrics())
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
    providers = build_providers(config, app[STORE], app[BLOBS], app[INSTANCE].id)
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


# One cleanup context per resource, as aiohttp's own examples do: each closes its own
# resource, and aiohttp runs every cleanup (in reverse order) even when one raises, so a
# provider whose close() fails still leaves the blob store and the store closed.


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = await open_store(app[SERVICE_CONFIG].store.url)
    app[STORE] = store
    app[AUTH].limiter = StoreWindow(store)  # limits shared by workers and replicas
    yield
    await store.close()


async def _instance(app: web.Application) -> AsyncIterator[None]:
    """This process's instance: owner of its pending creates and leases."""
    store, pc = app[STORE], app[SERVICE_CONFIG].poller
    me = instance.start()
    app[INSTANCE] = me
    await store.register_instance(me)
    # A predecessor that is provably gone (same host, pid gone) hands over at once.
    app[_CRASHED] = bool(await instance.reap(store, time.time(), pc.instance_timeout_seconds))
    heartbeat = asyncio.create_task(
        instance.keep_alive(store, me, pc.heartbeat_seconds, pc.instance_timeout_seconds)
    )
    yield
    heartbeat.cancel()
    with suppress(asyncio.CancelledError):
        await heartbeat
    instance.stop(me.id)
    with suppress(Exception):  # the store may be failing; then the heartbeat runs out
        await store.forget_instance(me.id)


async def _blobs(app: web.Application) -> AsyncIterator[None]:
    app[BLOBS] = await open_blobs(app[SERVICE_CONFIG].blobs)
    yield
    await app[BLOBS].close()


async def _providers(app: web.Application) -> AsyncIterator[None]:
    """The providers of the running config, and those a reload retired."""
    app[_PROVIDERS] = build_providers(app[SERVICE_CONFIG], app[STORE], app[BLOBS], app[INSTANCE].id)
    app[_RETIRED] = []
    yield
    service = app.get(SERVICE)
    running = service.providers.values() if service is not None else app[_PROVIDERS].values()
    for provider in [*running, *app[_RETIRED]]:
        try:
            await provider.close()
        except Exception as exc:  # the others still close
            log.error("provider %s did not close: %s", provider.name, type(exc).__name__)


async def _service(app: web.Application) -> AsyncIterator[None]:
    """The use cases and the background work of the primary process."""
    config, store = app[SERVICE_CONFIG], app[STORE]
    providers, me = app[_PROVIDERS], app[INSTANCE]
    service = GatewayService(
        store=store,
        blobs=app[BLOBS],
        providers=providers,
        router=Router(config, providers),
        config=config,
        events=metrics.BatchMetrics(tenant_labels=config.usage.tenant_labels),
        instance_id=me.id,
    )
    webhooks = WebhookSender(store, config.webhooks)
    poller = Poller(service, config.poller, webhooks, owner=me.id)
    if app[_CRASHED] or await store.pending_batches():
        poller.repair_soon()  # what a crash left behind is repaired at once
    app[SERVICE] = service
    app[POLLER] = poller
    app[_BACKGROUND] = background = set()
    if app[PRIMARY] and not config.poller.enabled:
        # Without a poller nothing else settles what a predecessor left; in the
        # background, so that a busy provider account does not delay serving.
        background.add(asyncio.create_task(_settle(service)))
    if config.poller.enabled and app[PRIMARY]:
        background.add(asyncio.create_task(poller.run()))
    if config.blobs.keep_provider_outputs and app[PRIMARY]:
        keeper = OutputKeeper(service, poller.owner, config.poller.lease_seconds)
        background.add(asyncio.create_task(keeper.run()))
    if app[PRIMARY] and config.usage.enabled:
        accountant = Accountant(service, sweep_seconds=config.usage.sweep_seconds)
        background.add(asyncio.create_task(accountant.run()))
    if CONFIG_PATH in app:
        with suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_config, app)
    yield
    with suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    for task in background:
        task.cancel()
    for task in list(background):
        with suppress(asyncio.CancelledError):
            await task
    await poller.stop()
    await webhooks.close()


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
    app.cleanup_ctx.extend((_store, _instance, _blobs, _providers, _service))
    add_routes(app)
    return app
