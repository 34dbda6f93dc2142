"""Short-lived bearer tokens (Entra ID, Google OAuth) for adapters that have no fixed key.

One cached token per adapter, fetched again shortly before it expires or after the provider
refused it; the token is scrubbed from every message like a key would be. A token source's
own errors name tenants, projects and hosts, so they reach nobody: the adapter gets an
`auth` ProviderError naming only the kind of credential.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from providers.base import ProviderError

__all__ = ["BearerToken", "TokenSource"]

# Returns (bearer token, its expiry in Unix seconds).
TokenSource = Callable[[], Awaitable[tuple[str, float]]]
# A token is fetched again this long before it expires.
REFRESH_SECONDS = 300


class BearerToken:
    def __init__(self, source: TokenSource, what: str) -> None:
        """`what` names the credential in errors ("an Entra ID token")."""
        self._source = source
        self._what = what
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    async def headers(self) -> dict[str, str]:
        """`Authorization: Bearer …` with a token valid for a while yet."""
        async with self._lock:
            if self._token is None or self._token[1] - time.time() < REFRESH_SECONDS:
                try:
                    self._token = await self._source()
                except ProviderError:
                    raise
                except Exception as exc:
                    message = f"could not get {self._what} ({type(exc).__name__})"
                    raise ProviderError("auth", message) from None
        return {"Authorization": f"Bearer {self._token[0]}"}

    def forget(self) -> None:
        """The provider refused the token (revoked, wrong audience): the next call gets a
        new one."""
        self._token = None

    def scrub(self, text: str) -> str:
        return text.replace(self._token[0], "[redacted]") if self._token else text
