"""Fixtures: the gateway as a real aiohttp server on loopback, driven by the openai SDK."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiobotocore.session import get_session
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.api import SERVICE
from gateway.app import SERVER_ARGS, create_app
from gateway.config import Config
from gateway.errors import Handler
from gateway.service import GatewayService
from gateway.store import Store, open_store
from tests.leakscan import SCAN, CollectingHandler
from tests.servers import PostgresServer, S3Server
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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; a missing install fails, never skips."""
    try:
        server = PostgresServer.start()
    except (RuntimeError, KeyError, OSError) as exc:
        pytest.fail(f"cannot start PostgreSQL for the tests: {exc}", pytrace=False)
    yield server
    server.stop()


_databases = itertools.count()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server, so tests never share rows."""
    return postgres_server.create_database(f"test_{os.getpid()}_{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store on each backend: a SQLite file, and a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    yield opened
    await opened.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server on loopback, for the session."""
    try:
        server = S3Server.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start the S3 server for the tests: {exc}", pytrace=False)
    yield server
    server.stop()


S3_KEYS = {"access_key_id": "test-access-key", "secret_access_key": "test-secret-key"}
_buckets = itertools.count()


@pytest.fixture
async def s3_blobs(s3_server: S3Server) -> dict[str, Any]:
    """The `blobs:` config of a new, empty bucket on the test S3 server."""
    config = {
        "endpoint_url": s3_server.endpoint_url,
        "bucket": f"gateway-test-{os.getpid()}-{next(_buckets)}",
        "prefix": "files/",
        "region": "us-east-1",
        **S3_KEYS,
        "part_bytes": 5 * 1024 * 1024,
    }
    async with s3_client(config) as client:
        await client.create_bucket(Bucket=config["bucket"])
    return {"s3": config}


def s3_client(config: dict[str, Any]) -> Any:
    """A plain client on the test bucket's server, to look behind the gateway's back."""
    return get_session().create_client(
        "s3",
        endpoint_url=config["endpoint_url"],
        region_name=config["region"],
        aws_access_key_id=config["access_key_id"],
        aws_secret_access_key=config["secret_access_key"],
    )
