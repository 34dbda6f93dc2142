"""Gateway keys -> tenant. Keys are configured as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from gateway.config import AuthConfig
from gateway.errors import Handler, Unauthorized

OPEN_TENANT = "default"
TENANT = web.RequestKey("tenant", str)
PUBLIC_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._open = config.open
        self._keys = tuple((bytes.fromhex(k.key_sha256), k.name) for k in config.keys)

    def tenant(self, authorization: str | None) -> str:
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        if token and self._keys:
            digest = hashlib.sha256(token.encode()).digest()
            found = None
            for expected, name in self._keys:  # no early exit: timing says nothing
                if hmac.compare_digest(digest, expected):
                    found = name
            if found is not None:
                return found
        if self._open:
            return OPEN_TENANT
        if token is None:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        raise Unauthorized("Incorrect API key provided.")

    def middleware(self) -> web.middleware:  # type: ignore[valid-type]
        @web.middleware
        async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path not in PUBLIC_PATHS:
                request[TENANT] = self.tenant(request.headers.get("Authorization"))
            return await handler(request)

        return auth_middleware


def tenant_of(request: web.Request) -> str:
    return request[TENANT]
