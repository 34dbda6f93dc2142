"""Fixtures: the gateway as a real aiohttp server on loopback, driven by the openai SDK."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.api import SERVICE
from gateway.app import SERVER_ARGS, create_app
from gateway.config import Config
from gateway.errors import Handler
from gateway.service import GatewayService
from tests.leakscan import SCAN, CollectingHandler
from tests.support import make_config


def pytest_sessionstart(session: pytest.Session) -> None:
    root = logging.getLogger()
    root.addHandler(CollectingHandler(SCAN))
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    for name in ("gateway", "providers"):
        logging.getLogger(name).setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Backstop for the scan test: a leak anywhere in the session fails the run."""
    if leaks := SCAN.leaks():
        print("\nSECRET LEAKS:\n" + "\n".join(leaks[:20]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@dataclass
class Gateway:
    """A running gateway, an SDK client on it, and every JSON body it answered."""

    config: Config
    server: TestServer
    client: openai.AsyncOpenAI
    http: aiohttp.ClientSession
    bodies: list[bytes] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/v1"))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def service(self) -> GatewayService:
        return self.server.app[SERVICE]


StartGateway = Callable[..., Awaitable[Gateway]]


def _recorder(bodies: list[bytes]) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        where = f"response to {request.method} {request.path[:100]}"
        SCAN.saw(where, "\n".join(f"{k}: {v}" for k, v in response.headers.items()))
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            bodies.append(response.body)
            SCAN.saw(where, response.body.decode(errors="replace"))
        return response

    return record


@pytest.fixture
async def start_gateway(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> AsyncIterator[StartGateway]:
    opened: list[Gateway] = []

    async def start(
        config: Config | None = None, *, api_key: str = "test-key", config_path: Path | None = None
    ) -> Gateway:
        config = config or make_config(tmp_path)
        SCAN.register_config(config, api_key)
        app = create_app(config, config_path=config_path)
        bodies: list[bytes] = []
        app.middlewares.insert(0, _recorder(bodies))
        server = await aiohttp_server(app, **SERVER_ARGS)
        gw = Gateway(
            config=config,
            server=server,
            client=openai.AsyncOpenAI(
                base_url=str(server.make_url("/v1")), api_key=api_key, max_retries=0
            ),
            http=aiohttp.ClientSession(),
            bodies=bodies,
        )
        opened.append(gw)
        return gw

    yield start
    for gw in opened:
        await gw.client.close()
        await gw.http.close()


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> Gateway:
    return await start_gateway()
