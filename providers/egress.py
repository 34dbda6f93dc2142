"""How a provider reaches its upstream: through which proxy, trusting which certificates.

Built once per provider (`build_egress`) and shared by both HTTP paths of `http.py`
(the kept-alive pool and the aiohttp session), so they can never disagree. Like curl:
`HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (any case) are honoured unless the provider
sets its own `proxy:`; `ca_file:` replaces the system store (curl's `--cacert`);
verification is only ever off by an explicit `tls_verify: false`, which warns.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import encode_basic_auth
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

log = logging.getLogger("providers.egress")


@dataclass(frozen=True, slots=True)
class Egress:
    """`proxy` holds no credentials; they travel only as the Proxy-Authorization value."""

    proxy: URL | None = None
    proxy_authorization: str | None = None
    # None: the system store (what an http:// upstream, or a provider built without
    # `build_egress`, gets).
    ssl_context: ssl.SSLContext | None = None
    # Every form of the proxy password, for the error scrubbing.
    secrets: tuple[str, ...] = ()

    @property
    def proxy_address(self) -> tuple[str, int] | None:
        if self.proxy is None or self.proxy.host is None:
            return None
        return self.proxy.host, self.proxy.port or 80


DIRECT = Egress()


def ssl_context(ca_file: Path | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """Only `ca_file` is trusted when it is given, not the system store as well (curl's
    `--cacert`): a private CA is then the only one that can vouch for the upstream."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def build_egress(
    name: str,
    base_url: str,
    *,
    proxy: str | None = None,
    ca_file: Path | None = None,
    tls_verify: bool = True,
) -> Egress:
    """The one place a provider's proxy and TLS settings are decided (at each start)."""
    url = URL(base_url)
    proxy_url: URL | None
    if proxy is not None:
        proxy_url = explicit = URL(proxy)
        user, password = explicit.user, explicit.password
    else:
        try:
            # NO_PROXY matching the upstream's host raises LookupError: go direct.
            proxy_url, auth = get_env_proxy_for_url(url)
        except LookupError:
            proxy_url, auth = None, None
        user, password = (auth.login, auth.password) if auth is not None else (None, None)
    authorization = None
    secrets: tuple[str, ...] = ()
    if proxy_url is not None:
        if user is not None or password is not None:
            authorization = encode_basic_auth(user or "", password or "")
            raw = proxy_url.raw_password
            secrets = tuple(s for s in (password, raw, authorization.split(" ", 1)[1]) if s)
        proxy_url = proxy_url.with_user(None).with_path("")
    context = None
    if url.scheme == "https" or ca_file is not None or not tls_verify:
        context = ssl_context(ca_file, verify=tls_verify)
    if not tls_verify:
        log.warning(
            "provider %s: TLS certificate verification is off (tls_verify: false); "
            "anyone on the network path can read and change its traffic",
            name,
        )
    return Egress(proxy_url, authorization, context, secrets)
