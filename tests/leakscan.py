"""A session-wide watch for secrets in what the gateway says.

Every gateway started by the `start_gateway` fixture registers the provider
keys, upstream URLs, webhook secrets and client keys its config and client use;
every JSON body and header it answers and every log record of the session
(any logger, tracebacks included) is kept. `leaks()` reports any registered
secret found in any of them. `conftest.py` fails the run at session end if
there is one, and `test_zz_no_secrets_leaked.py` asserts it as a test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.config import Config
from providers.config import RemoteConfig

GATEWAY_LOGGERS = ("gateway", "providers", "aiohttp.server", "aiohttp.web", "root")

# Shorter values would match by accident; the suite's secrets are all longer.
MIN_SECRET = 8


@dataclass
class LeakScan:
    secrets: dict[str, str] = field(default_factory=dict)  # value -> what it is
    seen: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    gateways: int = 0

    def register(self, value: str | None, what: str) -> None:
        if value and len(value) >= MIN_SECRET:
            self.secrets.setdefault(value, what)

    def register_config(self, config: Config, client_key: str | None = None) -> None:
        self.gateways += 1
        self.register(client_key, "a gateway key (Authorization header)")
        for name, provider in config.providers.items():
            if isinstance(provider, RemoteConfig):
                self.register(provider.secret_key(), f"{name}'s api_key")
                self.register(provider.base_url, f"{name}'s upstream URL")
                self.register(urlsplit(provider.base_url).netloc, f"{name}'s upstream host")
        for name, hook in config.webhooks.items():
            self.register(hook.secret.get_secret_value(), f"webhook {name}'s secret")

    def saw(self, where: str, text: str) -> None:
        self.seen.append((where, text))

    def leaks(self) -> list[str]:
        found = []
        for where, text in self.seen:
            for secret, what in self.secrets.items():
                if secret in text:
                    found.append(f"{what} in {where}: {text[:300]!r}")
        return found


class CollectingHandler(logging.Handler):
    """Keeps every formatted record (with its traceback) for the scan."""

    def __init__(self, scan: LeakScan) -> None:
        super().__init__(logging.DEBUG)
        self.scan = scan
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # The gateway's own lines; the test clients' request logs name the gateway's URL,
        # and loopback ports are reused between tests (a gateway may get a port an upstream
        # of an earlier test had).
        if not record.name.startswith(GATEWAY_LOGGERS):
            return
        try:
            self.scan.saw(f"log {record.name}", self.format(record))
        except Exception:  # a bad record must not break the test that logged it
            self.handleError(record)


SCAN = LeakScan()
