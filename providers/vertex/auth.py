"""Google OAuth access tokens for Vertex AI and Cloud Storage, from google-auth.

google-auth is synchronous, so loading the credentials (application default credentials
may ask the metadata server) and refreshing them run in a thread
(`asyncio.to_thread`) with its `requests` transport, on a session that goes through the
provider's proxy and trusts its CA file like every other call of the adapter. The token
is cached by `providers.tokens.BearerToken`, which also keeps it out of every message.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from providers.tokens import TokenSource

__all__ = ["SCOPE", "google_token_source"]

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# When google-auth gives no expiry, the token is taken to live this long.
_DEFAULT_LIFETIME = 3000.0


def _session(proxy: str | None, ca_file: Path | None, tls_verify: bool) -> requests.Session:
    session = requests.Session()
    if proxy is not None:
        session.trust_env = False  # the provider's own proxy, not the environment's
        session.proxies = {"http": proxy, "https": proxy}
    if ca_file is not None:
        session.verify = str(ca_file)
    elif not tls_verify:
        session.verify = False
    return session


def _from_file(path: Path) -> Any:
    """A service account key, or a user's credentials (`gcloud auth application-default
    login`), by the file's own `type`: google-auth's generic loader is deprecated for files
    of unchecked origin."""
    from google.oauth2 import credentials, service_account

    kind = json.loads(path.read_text()).get("type")
    if kind == "service_account":
        return service_account.Credentials.from_service_account_file(str(path), scopes=[SCOPE])
    if kind == "authorized_user":
        return credentials.Credentials.from_authorized_user_file(str(path), scopes=[SCOPE])
    raise ValueError("credentials_file must hold a service_account or authorized_user key")


def google_token_source(
    credentials_file: Path | None,
    *,
    proxy: str | None = None,
    ca_file: Path | None = None,
    tls_verify: bool = True,
) -> TokenSource:
    """A `TokenSource` with the cloud-platform scope: the key at `credentials_file`, else
    application default credentials."""
    import google.auth
    from google.auth.transport.requests import Request

    held: dict[str, Any] = {}
    lock = threading.Lock()

    def refresh() -> tuple[str, float]:
        with lock:
            credentials = held.get("credentials")
            if credentials is None:
                if credentials_file is not None:
                    credentials = _from_file(credentials_file)
                else:
                    credentials, _ = google.auth.default(scopes=[SCOPE])
                held["credentials"] = credentials
                held["request"] = Request(_session(proxy, ca_file, tls_verify))
            credentials.refresh(held["request"])
            expiry = credentials.expiry
            if isinstance(expiry, datetime):
                # google-auth keeps expiries as naive UTC datetimes.
                expires = expiry.replace(tzinfo=expiry.tzinfo or UTC).timestamp()
            else:
                expires = datetime.now(UTC).timestamp() + _DEFAULT_LIFETIME
            return str(credentials.token), expires

    async def source() -> tuple[str, float]:
        return await asyncio.to_thread(refresh)

    return source
