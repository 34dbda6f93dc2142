"""Gateway keys -> tenant. Keys are configured as SHA-256 hashes, compared in constant time.

Three kinds of caller:
- a tenant key: its own files and batches, within its `limits` and `providers`;
- the admin key (`auth.admin_key_sha256`): read-only, and only for the tenant it
  names in `X-Gateway-Tenant`: list and retrieve files and batches, nothing else;
  and the operators' admin API (`/v1/gateway/admin/`) across tenants;
- with `auth.open`, anyone else is the tenant "default" (local use only).

The Authorization header is never logged or echoed; a wrong key gets the same
answer as a missing one apart from the message.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from aiohttp import web

from gateway.config import AuthConfig, KeyConfig
from gateway.errors import Handler, InvalidRequest, PermissionDenied, Unauthorized, rate_limited
from gateway.limits import RateLimiter
from gateway.logs import route_of

OPEN_TENANT = "default"
TENANT = web.RequestKey("tenant", str)
TENANT_HEADER = "X-Gateway-Tenant"
# The console's static files (gateway.api.console): no data in them, so no key.
CONSOLE_PATHS = frozenset({"/console", "/console/console.js", "/console/console.css"})
PUBLIC_PATHS = (
    frozenset({"/health/live", "/health/ready", "/metrics", "/openapi.json"}) | CONSOLE_PATHS
)
ADMIN_PREFIX = "/v1/gateway/admin/"
# The operators' routes (gateway.api.admin): the admin key only (or the local caller
# with `auth.open`), across tenants; a tenant key gets 403.
ADMIN_ONLY = frozenset(
    {
        ("GET", "/v1/gateway/admin/batches"),
        ("GET", "/v1/gateway/admin/batches/{batch_id}"),
        ("POST", "/v1/gateway/admin/batches/{batch_id}/refresh"),
        ("GET", "/v1/gateway/admin/providers"),
    }
)
# What the admin key may do: (method, route pattern).
ADMIN_ROUTES = (
    frozenset(
        {
            ("GET", "/v1/files"),
            ("GET", "/v1/files/{file_id}"),
            ("GET", "/v1/batches"),
            ("GET", "/v1/batches/{batch_id}"),
            ("GET", "/v1/gateway/usage"),
        }
    )
    | ADMIN_ONLY
)
# Admin routes that answer for every tenant when no tenant is named.
ACROSS_TENANTS = frozenset({("GET", "/v1/gateway/usage")}) | ADMIN_ONLY
# The "tenant" of an admin request across tenants (never a key name: those are [A-Za-z0-9._-]).
ALL_TENANTS = "\x00all"
_ADMIN = "\x00admin"  # never a key name (names are [A-Za-z0-9._-])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    key: KeyConfig | None = None
    admin: bool = False


class Authenticator:
    def __init__(self, config: AuthConfig, limiter: RateLimiter | None = None) -> None:
        # Set once the store is open (app startup); no request is handled before that.
        self.limiter: RateLimiter | None = limiter
        self.configure(config)

    def configure(self, config: AuthConfig) -> None:
        """(Re)load keys; one assignment each, so a request sees old or new, never a mix."""
        keys = [(bytes.fromhex(k.key_sha256), k.name) for k in config.keys]
        if config.admin_key_sha256:
            keys.append((bytes.fromhex(config.admin_key_sha256), _ADMIN))
        self._keys = tuple(keys)
        self._by_name = {k.name: k for k in config.keys}
        self._open = config.open

    def caller(self, authorization: str | None) -> Caller:
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        if token and self._keys:
            digest = hashlib.sha256(token.encode()).digest()
            found = None
            for expected, name in self._keys:  # no early exit: timing says nothing
                if hmac.compare_digest(digest, expected):
                    found = name
            if found == _ADMIN:
                return Caller(tenant="", admin=True)
            if found is not None:
                return Caller(tenant=found, key=self._by_name[found])
        if self._open:
            return Caller(tenant=OPEN_TENANT)
        if token is None:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        raise Unauthorized("Incorrect API key provided.")

    def _as_admin(self, request: web.Request) -> str:
        """The tenant an admin request acts on; only the read routes are allowed."""
        route = (request.method, route_of(request))
        if route not in ADMIN_ROUTES:
            raise PermissionDenied(
                "The admin key may only list and retrieve files and batches, and read usage.",
                code="admin_read_only",
            )
        name = request.headers.get(TENANT_HEADER, "")
        if not name and route in ACROSS_TENANTS:
            return ALL_TENANTS
        known = set(self._by_name) | ({OPEN_TENANT} if self._open else set())
        if name not in known:
            raise InvalidRequest(
                f"Admin requests must name a configured tenant in {TENANT_HEADER}.",
                param=TENANT_HEADER,
                code="unknown_tenant",
            )
        return name

    async def _check_rate(self, key: KeyConfig) -> None:
        rpm = key.limits.requests_per_minute
        if rpm is not None and self.limiter is not None:
            wait = await self.limiter.hit(f"rpm:{key.name}", rpm, 60.0)
            if wait is not None:
                raise rate_limited(wait)

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        @web.middleware
        async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in PUBLIC_PATHS:
                return await handler(request)
            caller = self.caller(request.headers.get("Authorization"))
            if request.path.startswith(ADMIN_PREFIX):
                # Checked on the path, not the route: an unknown admin path is no
                # tenant's business either.
                if not caller.admin and caller.key is not None:
                    raise PermissionDenied(
                        "Only the admin key may use the admin API.", code="admin_only"
                    )
                request[TENANT] = ALL_TENANTS
                return await handler(request)
            if caller.admin:
                request[TENANT] = self._as_admin(request)
            else:
                request[TENANT] = caller.tenant
                if caller.key is not None:
                    await self._check_rate(caller.key)
            return await handler(request)

        return auth_middleware


def tenant_of(request: web.Request) -> str:
    return request[TENANT]


def exposure_warning(host: str, config: AuthConfig) -> str | None:
    """A loud warning when open auth listens beyond loopback (anyone may spend the keys)."""
    if not config.open:
        return None
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a hostname other than localhost may resolve to anything
    return (
        f"SECURITY: auth.open is true and the gateway listens on {host or 'all interfaces'}. "
        "Anyone who can reach this address can run batches on your provider keys and read "
        "every result. Configure auth.keys, or listen on 127.0.0.1."
    )
