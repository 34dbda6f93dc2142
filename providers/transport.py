"""How a provider's small JSON calls reach the network, and what their failures mean.

Two implementations of one `Transport`: the kept-alive `ConnectionPool` (`pool.py`, the
fast default) and `AiohttpTransport` here, aiohttp's client, chosen per provider by
`transport:` in the config so a network the pool can't handle yet still has a working
path. The aiohttp one also carries every provider's uploads and downloads, on one session.

Both fail in the same terms, which `http.transport_error` turns into ProviderErrors:
`ConnectError` only when the request was never sent (a create can be tried again), and
`TimeoutError` or any other `ConnectionError` (`LostConnection`) when it may have been
carried out (a create must be looked up first: see `gateway/creates.py`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, Literal, Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from providers.egress import DIRECT, Egress

TransportName = Literal["pool", "aiohttp"]
USER_AGENT = "batch-gateway"
UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")

# (status, headers, body): a whole answer of any status.
Answer = tuple[int, CIMultiDictProxy[str], bytes]

# A request body: bytes and JSON for the small calls; a form, an open file or an aiohttp
# payload (an async iterable of chunks) streamed by aiohttp for uploads.
Body = bytes | aiohttp.FormData | aiohttp.payload.Payload | IO[bytes] | None


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    """How an adapter reaches its upstream, built once per provider from its config
    (`registry.py`) and handed whole through the adapter to both transports."""

    base_url: str
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    egress: Egress = DIRECT  # the proxy and TLS settings every path uses (`build_egress`)
    transport: TransportName = "pool"  # what carries the small JSON calls


class ConnectError(ConnectionError):
    """No connection could be made: the request was never sent."""


class LostConnection(ConnectionError):
    """The connection ended before a whole answer arrived."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # some of an answer had arrived


class Transport(Protocol):
    """One request to the provider's origin, answered whole. Raises ConnectError (never
    sent), TimeoutError or another ConnectionError (maybe carried out), ValueError (a
    target or header that could split the request)."""

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """`target`: the path (and query) under the base URL, already percent-encoded."""
        ...

    async def close(self) -> None: ...


def aiohttp_failure(exc: aiohttp.ClientError) -> Exception:
    """An aiohttp client error in the pool's terms (same messages for the same failures)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ConnectError(f"could not connect ({type(exc.certificate_error).__name__})")
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS, proxy unreachable
        return ConnectError(f"could not connect ({type(exc.os_error).__name__})")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before this one is ServerTimeoutError
        return ConnectError("could not connect (TimeoutError)")
    if isinstance(exc, aiohttp.ClientHttpProxyError):  # the CONNECT was answered non-2xx
        return ConnectError(f"the proxy refused the tunnel (HTTP {exc.status})")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return TimeoutError("no whole answer in time")
    answered = isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError)
    return LostConnection(f"connection closed ({type(exc).__name__})", answered=answered)


class AiohttpTransport:
    """aiohttp's client for one provider, with its proxy, TLS context and timeouts.

    The session is made on first use (it needs a running loop) and kept for the process.
    """

    def __init__(self, http: HTTPSettings, headers: Mapping[str, str]) -> None:
        self._base_url = http.base_url.rstrip("/")
        self._egress = egress = http.egress
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=http.connect_timeout, sock_read=http.read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"User-Agent": USER_AGENT, **headers}
        # aiohttp takes proxy credentials only as headers (proxy_auth is deprecated): its
        # proxy_headers go on a CONNECT (https) only; a forward proxy (http) reads them
        # from each request.
        auth = egress.proxy_authorization
        self._proxy_headers: dict[str, str] | None = None
        if auth and URL(self._base_url).scheme == "https":
            self._proxy_headers = {"Proxy-Authorization": auth}
        elif auth:
            self._headers["Proxy-Authorization"] = auth

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No session-wide headers: aiohttp copies those into what it sends a proxy
            # (an Authorization among them becomes Proxy-Authorization), so the key goes
            # with each request instead.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(
                    limit=256, ttl_dns_cache=300, ssl=self._egress.ssl_context or True
                ),
                # Resolved once by build_egress (NO_PROXY included), not per request.
                proxy=self._egress.proxy,
                trust_env=False,
                # Provider APIs authenticate by header; a real jar only costs a
                # cookie filter and update on every call.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    @asynccontextmanager
    async def open(
        self,
        method: str,
        target: str,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
        *,
        read_bufsize: int | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The answer with its body still to read (a download streams it); failures, also
        those while the body is read, are raised in the pool's terms."""
        url = self._base_url + target
        # Sent as given, like the pool; only a target that isn't (a provider's malformed
        # results_url) is quoted by yarl, as aiohttp always did, rather than refused.
        encoded = UNSAFE_TARGET.search(target) is None
        try:
            async with self.session.request(
                method,
                URL(url, encoded=encoded),
                data=body,
                headers={**self._headers, **headers} if headers else self._headers,
                proxy_headers=self._proxy_headers,
                read_bufsize=read_bufsize,
            ) as resp:
                yield resp
        except aiohttp.ClientError as exc:
            raise aiohttp_failure(exc) from None

    async def request(
        self,
        method: str,
        target: str,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Also takes a form or an open file, streamed (uploads, big request bodies)."""
        if UNSAFE_TARGET.search(target):  # as the pool refuses it
            raise ValueError("the request target holds a space or a control character")
        # The head the pool sends: an answer this small gains nothing from compression.
        headers = {"Accept-Encoding": "identity", **(headers or {})}
        async with self.open(method, target, body, headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
