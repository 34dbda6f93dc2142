"""Egress like curl: env proxies, a provider's own `proxy:`, `ca_file:` and `tls_verify`.

Everything here is real on loopback: a CONNECT/forward proxy (`tests.fakes.proxy`), the
fake OpenAI upstream over TLS with certificates made at test time by a private CA, and
the openai SDK driving the gateway. Both HTTP paths of a provider are covered: the aiohttp
session (uploads, downloads) and the transport of the small JSON calls, each test that
goes through a proxy or TLS once per `transport:` (the kept-alive pool, aiohttp's client).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import ipaddress
import logging
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from gateway.config import ConfigError, parse_config
from providers.base import ProviderError
from providers.egress import Egress
from providers.http import HTTPProvider
from providers.pool import ConnectionPool
from providers.transport import ConnectError, HTTPSettings
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.fakes.proxy import FakeProxy
from tests.leakscan import SCAN
from tests.support import adapter_for, chat_file, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_pool import TRANSPORTS, make_transport

KEY = "sk-egress-upstream-key-789"
PROXY_USER = "gw-user"
PROXY_PASSWORD = "pr0xy-pa55-egress-7731"
PROXY_AUTH = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
ENV_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")
PEERS = web.AppKey("peers", list[int])
Upstream = tuple[TestServer, FakeOpenAIState]


# -- certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A private CA (`ca`, PEM) and server certificates it signed, as (cert, key) files."""

    ca: Path
    good: tuple[Path, Path]  # 127.0.0.1 and localhost, valid now
    expired: tuple[Path, Path]
    wrong_host: tuple[Path, Path]  # valid now, for another name

    def server_context(self, which: str) -> ssl.SSLContext:
        cert, key = getattr(self, which)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """EC keys: a whole PKI in milliseconds."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("egress test CA"))
        .issuer_name(_name("egress test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(
        stem: str, names: list[x509.GeneralName], start: dt.datetime, end: dt.datetime
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return _write(folder, stem, cert, key)

    loopback: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    day = dt.timedelta(days=1)
    return Pki(
        ca=ca_path,
        good=leaf("good", loopback, now - day, now + day),
        expired=leaf("expired", loopback, now - 10 * day, now - day),
        wrong_host=leaf("wrong-host", [x509.DNSName("upstream.example")], now - day, now + day),
    )


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA settings from the machine running the tests."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """What carries the small JSON calls: the test runs once with each."""
    return str(request.param)


@pytest.fixture
async def proxies() -> AsyncIterator[Callable[..., Awaitable[FakeProxy]]]:
    started: list[FakeProxy] = []

    async def start(credentials: str | None = None) -> FakeProxy:
        proxy = await FakeProxy(credentials=credentials).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.close()


@pytest.fixture
def start_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> Callable[..., Awaitable[Upstream]]:
    """The fake OpenAI upstream, over TLS when given a context; it notes each request's
    client port, to tell calls that came through the proxy from direct ones."""

    async def start(tls: ssl.SSLContext | None = None) -> Upstream:
        app = make_openai_upstream(KEY)
        peers = app[PEERS] = []

        @web.middleware
        async def note_peer(request: web.Request, handler: Any) -> web.StreamResponse:
            peers.append(int(request.transport.get_extra_info("peername")[1]))  # type: ignore[union-attr]
            return await handler(request)  # type: ignore[no-any-return]

        app.middlewares.insert(0, note_peer)
        server = await aiohttp_server(app, ssl=tls)
        return server, app[UPSTREAM]

    return start


@pytest.fixture
async def sdk() -> AsyncIterator[Callable[[Gateway], openai.AsyncOpenAI]]:
    """An SDK client that ignores the proxy variables: only the gateway's calls go there."""
    made: list[openai.DefaultAsyncHttpxClient] = []

    def make(gw: Gateway) -> openai.AsyncOpenAI:
        http = openai.DefaultAsyncHttpxClient(trust_env=False)
        made.append(http)
        return openai.AsyncOpenAI(
            base_url=gw.base_url, api_key="test-key", max_retries=0, http_client=http
        )

    yield make
    for http in made:
        await http.aclose()


def provider(upstream: TestServer, **extra: Any) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": str(upstream.make_url("/v1")),
        "api_key": KEY,
        "max_retries": 0,
        "retry_backoff_seconds": 0,
        **extra,
    }


async def start_on(
    start_gateway: StartGateway, tmp_path: Path, provider_config: dict[str, Any]
) -> Gateway:
    config = make_config(tmp_path, providers={"up": provider_config}, default="up")
    return await start_gateway(config)


async def full_flow(client: openai.AsyncOpenAI) -> None:
    """Upload, create, retrieve to the end, download, create and cancel, list."""
    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(3))), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_terminal(client, batch.id)
    assert done.status == "completed" and done.output_file_id is not None
    assert b'"custom_id"' in (await client.files.content(done.output_file_id)).content
    second = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await client.batches.cancel(second.id)).status in ("cancelling", "cancelled")
    listed = await client.batches.list(limit=10)
    assert {batch.id, second.id} <= {b.id for b in listed.data}


async def upload_and_create(client: openai.AsyncOpenAI) -> None:
    """The file reaches the provider at create, on the session; the create on the transport."""
    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def assert_both_paths_used(state: FakeOpenAIState) -> None:
    calls = {(method, path.rsplit("/", 1)[-1]) for method, path in state.requests}
    assert ("POST", "files") in calls  # multipart upload: the aiohttp session
    assert ("POST", "batches") in calls  # JSON: the configured transport
    assert ("GET", "content") in calls  # streamed download: the aiohttp session


def assert_all_through(proxy: FakeProxy, upstream: TestServer) -> None:
    """Every connection the upstream served was opened by the proxy, and the provider's key
    never went to the proxy as its own credentials or on a CONNECT (a tunnel hides it)."""
    peers = upstream.app[PEERS]
    assert peers and set(peers) <= proxy.upstream_ports
    for seen in proxy.seen:
        assert seen.proxy_authorization in (None, PROXY_AUTH)
        if seen.method == "CONNECT":
            assert KEY not in seen.head


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog


def assert_no_proxy_secret(*texts: str) -> None:
    for text in texts:
        assert PROXY_PASSWORD not in text
        assert PROXY_AUTH.split(" ", 1)[1] not in text


# -- proxies --------------------------------------------------------------------------


async def test_env_http_proxy_carries_every_upstream_call(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    transport: str,
) -> None:
    upstream, state = await start_upstream()
    proxy = await proxies()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    gw = await start_on(start_gateway, tmp_path, provider(upstream, transport=transport))
    await full_flow(sdk(gw))

    assert_both_paths_used(state)
    # Absolute-form targets to the proxy, and each call the upstream saw is among them.
    origin = f"http://127.0.0.1:{upstream.port}/v1/"
    assert proxy.seen and all(s.target.startswith(origin) for s in proxy.seen)
    proxied = Counter((s.method, urlsplit(s.target).path) for s in proxy.seen)
    assert not Counter(state.requests) - proxied
    assert_all_through(proxy, upstream)


async def test_no_proxy_naming_the_upstream_host_goes_direct(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    upstream, state = await start_upstream()
    proxy = await proxies()
    monkeypatch.setenv("http_proxy", proxy.url)  # the lower-case forms count too
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    gw = await start_on(start_gateway, tmp_path, provider(upstream))
    await full_flow(sdk(gw))
    assert_both_paths_used(state)
    assert proxy.seen == []


async def test_provider_proxy_wins_over_env_and_sends_its_credentials(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    transport: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    SCAN.register(PROXY_PASSWORD, "the proxy password")
    SCAN.register(PROXY_AUTH.split(" ", 1)[1], "the proxy credentials (base64)")
    upstream, state = await start_upstream()
    env_proxy, proxy = await proxies(), await proxies(credentials=PROXY_AUTH)
    monkeypatch.setenv("HTTP_PROXY", env_proxy.url)
    own = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    gw = await start_on(start_gateway, tmp_path, provider(upstream, transport=transport, proxy=own))
    await full_flow(sdk(gw))

    assert_both_paths_used(state)
    assert env_proxy.seen == []
    assert proxy.seen and {s.proxy_authorization for s in proxy.seen} == {PROXY_AUTH}
    assert_all_through(proxy, upstream)
    assert_no_proxy_secret(logs.text, *(b.decode() for b in gw.bodies))


async def test_refused_proxy_credentials_never_reach_the_client_or_the_logs(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    tmp_path: Path,
    transport: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    """The proxy answers 407 and echoes the credentials it got, decoded and not."""
    SCAN.register(PROXY_PASSWORD, "the proxy password")
    upstream, state = await start_upstream()
    proxy = await proxies(credentials="Basic c29tZW9uZTplbHNl")
    own = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    gw = await start_on(start_gateway, tmp_path, provider(upstream, transport=transport, proxy=own))
    with pytest.raises(openai.APIStatusError) as refused:
        await upload_and_create(sdk(gw))
    body = refused.value.response.text
    assert "error" in refused.value.response.json()
    # The pool's path, through the same adapter the gateway built.
    adapter = adapter_for("up", gw.config, gw.config.base_dir / "adapter")
    try:
        with pytest.raises(ProviderError) as pooled:
            await adapter.get_batch("batch_abc")
    finally:
        await adapter.close()
    assert state.requests == []
    assert proxy.seen and {s.proxy_authorization for s in proxy.seen} == {PROXY_AUTH}
    assert_no_proxy_secret(body, pooled.value.message, logs.text, *(b.decode() for b in gw.bodies))


@pytest.mark.parametrize("kind", ["openai", "anthropic", "emulated"])
async def test_every_http_adapter_uses_its_proxy_on_both_paths(
    kind: str,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    tmp_path: Path,
    transport: str,
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    server = await aiohttp_server(app)
    proxy = await proxies(credentials=PROXY_AUTH)
    own = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    config = make_config(
        tmp_path,
        providers={
            "p": {
                "type": kind,
                "base_url": str(server.make_url("/v1")),
                "api_key": KEY,
                "proxy": own,
                "transport": transport,
            }
        },
        default="p",
    )
    adapter = adapter_for("p", config, tmp_path / "adapter")
    assert isinstance(adapter, HTTPProvider)
    try:
        assert (await adapter.request_json("GET", "/pool"))["path"] == "/v1/pool"
        async with adapter.stream("/session") as chunks:
            assert b"/v1/session" in b"".join([c async for c in chunks])
    finally:
        await adapter.close()
    origin = f"http://127.0.0.1:{server.port}"
    assert [s.target for s in proxy.seen] == [f"{origin}/v1/pool", f"{origin}/v1/session"]
    assert {s.proxy_authorization for s in proxy.seen} == {PROXY_AUTH}


# -- TLS ------------------------------------------------------------------------------


async def test_https_upstream_trusted_through_ca_file(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    pki: Pki,
    tmp_path: Path,
    transport: str,
) -> None:
    upstream, state = await start_upstream(pki.server_context("good"))
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(pki.ca.read_bytes())
    # Relative to the config file's folder, like every other path in it.
    gw = await start_on(
        start_gateway, tmp_path, provider(upstream, transport=transport, ca_file="certs/ca.pem")
    )
    assert gw.config.providers["up"].ca_file == tmp_path / "certs" / "ca.pem"
    await full_flow(sdk(gw))
    assert_both_paths_used(state)


async def assert_refused(gw: Gateway, client: openai.AsyncOpenAI, upstream: TestServer) -> None:
    """Both paths refuse the upstream; the client sees an upstream error, nothing more."""
    with pytest.raises(openai.APIStatusError) as refused:
        await upload_and_create(client)
    assert refused.value.status_code in (502, 503)
    error = refused.value.response.json()["error"]
    assert error["type"] == "upstream_error"
    text = refused.value.response.text
    for leak in ("127.0.0.1", "localhost", str(upstream.port), "Traceback", "https://"):
        assert leak not in text
    adapter = adapter_for("up", gw.config, gw.config.base_dir / "adapter")
    try:
        with pytest.raises(ProviderError) as pooled:
            await adapter.get_batch("batch_abc")
    finally:
        await adapter.close()
    assert pooled.value.kind == "retryable" and "127.0.0.1" not in pooled.value.message
    assert "Certificate" in pooled.value.message or "SSL" in pooled.value.message


async def test_https_upstream_refused_without_ca_file(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    pki: Pki,
    tmp_path: Path,
    transport: str,
) -> None:
    upstream, state = await start_upstream(pki.server_context("good"))
    gw = await start_on(start_gateway, tmp_path, provider(upstream, transport=transport))
    await assert_refused(gw, sdk(gw), upstream)
    assert state.requests == []


@pytest.mark.parametrize("certificate", ["expired", "wrong_host"])
async def test_bad_certificates_are_refused_even_with_ca_file(
    certificate: str,
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    pki: Pki,
    tmp_path: Path,
    transport: str,
) -> None:
    upstream, state = await start_upstream(pki.server_context(certificate))
    gw = await start_on(
        start_gateway, tmp_path, provider(upstream, transport=transport, ca_file=str(pki.ca))
    )
    await assert_refused(gw, sdk(gw), upstream)
    assert state.requests == []


async def test_tls_verify_false_accepts_any_certificate_and_warns(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    pki: Pki,
    tmp_path: Path,
    transport: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    upstream, state = await start_upstream(pki.server_context("wrong_host"))
    gw = await start_on(
        start_gateway, tmp_path, provider(upstream, transport=transport, tls_verify=False)
    )
    await full_flow(sdk(gw))
    assert_both_paths_used(state)
    warnings = [
        r.getMessage()
        for r in logs.records
        if r.levelno == logging.WARNING and "tls_verify: false" in r.getMessage()
    ]
    assert len(warnings) == 1 and "provider up" in warnings[0]
    assert KEY not in warnings[0]


async def test_https_through_connect_proxy_with_ca_file(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    transport: str,
) -> None:
    upstream, state = await start_upstream(pki.server_context("good"))
    proxy = await proxies()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # http:// upstreams only
    gw = await start_on(
        start_gateway, tmp_path, provider(upstream, transport=transport, ca_file=str(pki.ca))
    )
    await full_flow(sdk(gw))
    assert_both_paths_used(state)
    assert proxy.seen and {(s.method, s.target) for s in proxy.seen} == {
        ("CONNECT", f"127.0.0.1:{upstream.port}")
    }
    assert_all_through(proxy, upstream)


async def test_https_through_provider_proxy_with_credentials(
    start_gateway: StartGateway,
    start_upstream: Callable[..., Awaitable[Upstream]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    sdk: Callable[[Gateway], openai.AsyncOpenAI],
    pki: Pki,
    tmp_path: Path,
    transport: str,
) -> None:
    upstream, state = await start_upstream(pki.server_context("good"))
    proxy = await proxies(credentials=PROXY_AUTH)
    own = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    gw = await start_on(
        start_gateway,
        tmp_path,
        provider(upstream, transport=transport, proxy=own, ca_file=str(pki.ca)),
    )
    await full_flow(sdk(gw))
    assert_both_paths_used(state)
    assert {s.proxy_authorization for s in proxy.seen} == {PROXY_AUTH}
    assert_all_through(proxy, upstream)


# -- the transports on their own ------------------------------------------------------


def through(
    proxy: FakeProxy, url: str, ca: Path | None = None, auth: str | None = None
) -> HTTPSettings:
    """The settings of a provider at `url` behind `proxy`, trusting `ca`."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    egress = Egress(URL(f"http://127.0.0.1:{proxy.port}"), auth, context)
    return HTTPSettings(url, connect_timeout=2.0, read_timeout=2.0, egress=egress)


async def test_transport_keeps_one_tunnel_alive_for_many_calls(
    start_upstream: Callable[..., Awaitable[Upstream]],
    proxies: Callable[..., Awaitable[FakeProxy]],
    pki: Pki,
    transport: str,
) -> None:
    upstream, _ = await start_upstream(pki.server_context("good"))
    proxy = await proxies()
    http = through(proxy, str(upstream.make_url("/v1")), pki.ca)
    calls = make_transport(transport, http, {"Authorization": f"Bearer {KEY}"})
    try:
        for _ in range(3):
            status, _, _ = await calls.request("GET", "/batches")
            assert status == 200
    finally:
        await calls.close()
    assert [s.method for s in proxy.seen] == ["CONNECT"]


def test_pool_tunnel_works_on_uvloop(pki: Pki) -> None:
    """`serve` runs on uvloop, whose start_tls is its own implementation."""
    uvloop = pytest.importorskip("uvloop")

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def main() -> list[str]:
        app = web.Application()
        app.router.add_get("/v1/ping", ping)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context("good"))
        await site.start()
        proxy = await FakeProxy().start()
        pool = ConnectionPool(
            through(proxy, f"https://127.0.0.1:{runner.addresses[0][1]}/v1", pki.ca), {}
        )
        try:
            answers = [await pool.request("GET", "/ping") for _ in range(2)]
            assert [(status, body) for status, _, body in answers] == [(200, b'{"ok": true}')] * 2
        finally:
            await pool.close()
            await proxy.close()
            await runner.cleanup()
        return [s.method for s in proxy.seen]

    assert uvloop.run(main()) == ["CONNECT"]


async def test_tunnel_refused_by_the_proxy_is_a_connect_error(
    proxies: Callable[..., Awaitable[FakeProxy]], transport: str
) -> None:
    """Definite on both transports: the upstream never saw the request."""
    proxy = await proxies(credentials=PROXY_AUTH)
    http = through(proxy, "https://127.0.0.1:9/v1", auth="Basic d3Jvbmc6d3Jvbmc=")
    calls = make_transport(transport, http, {})
    try:
        with pytest.raises(ConnectError, match=r"refused the tunnel \(HTTP 407\)"):
            await calls.request("POST", "/batches", b"{}")
    finally:
        await calls.close()
    assert proxy.seen[0].target == "127.0.0.1:9"


# -- config ---------------------------------------------------------------------------


def parse_provider(tmp_path: Path, **options: Any) -> Any:
    raw = {"type": "openai", "base_url": "https://api.example/v1", "api_key": "k", **options}
    return parse_config({"providers": {"p": raw}, "default": "p"}, tmp_path).providers["p"]


def test_proxy_must_be_plain_http_and_errors_never_repeat_it(tmp_path: Path) -> None:
    assert parse_provider(tmp_path, proxy="http://u:p@proxy.internal:3128").proxy
    for bad in (
        f"https://u:{PROXY_PASSWORD}@proxy.internal:3128",
        f"socks5://u:{PROXY_PASSWORD}@proxy.internal:1080",
        f"http://u:{PROXY_PASSWORD}@proxy.internal:3128/some/path",
        f"http://u:{PROXY_PASSWORD}@proxy.internal:99999",
    ):
        with pytest.raises(ConfigError, match=r"providers\.p\..*proxy: ") as exc:
            parse_provider(tmp_path, proxy=bad)
        assert PROXY_PASSWORD not in str(exc.value)


def test_ca_file_must_be_readable_and_excludes_tls_verify_false(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="providers.p.ca_file: cannot use"):
        parse_provider(tmp_path, ca_file="missing.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM bundle"):
        parse_provider(tmp_path, ca_file="junk.pem")
    with pytest.raises(ConfigError, match="not both"):
        parse_provider(tmp_path, ca_file="junk.pem", tls_verify=False)
    assert parse_provider(tmp_path).tls_verify is True
