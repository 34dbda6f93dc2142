"""config.yaml rules -> the provider that runs a batch.

Rules are tried in order; the first one that matches and names a usable
provider (enabled, supports the endpoint) wins; `default` is the last resort.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from gateway.config import Config, Route
from gateway.errors import InvalidRequest
from providers.base import Provider


@dataclass(frozen=True, slots=True)
class Decision:
    provider: str
    rule: str  # "routes[0]" or "default", for logs and metrics


def matches(
    route: Route, endpoint: str, models: Iterable[str], metadata: Mapping[str, str]
) -> bool:
    m = route.match
    if m.endpoint is not None and m.endpoint != endpoint:
        return False
    # A file that uses several models matches only a rule that accepts all of them.
    if m.model is not None and not all(fnmatchcase(model, m.model) for model in models):
        return False
    return not m.metadata or all(metadata.get(k) == v for k, v in m.metadata.items())


class Router:
    def __init__(self, config: Config, providers: Mapping[str, Provider]) -> None:
        self._config = config
        self._providers = providers

    def usable(self, name: str, endpoint: str) -> bool:
        provider = self._providers.get(name)
        return provider is not None and provider.supports(endpoint)

    def choose(
        self, endpoint: str, models: Iterable[str], metadata: Mapping[str, str] | None
    ) -> Decision:
        models = tuple(models)
        for i, route in enumerate(self._config.routes):
            if matches(route, endpoint, models, metadata or {}) and self.usable(route.to, endpoint):
                return Decision(route.to, f"routes[{i}]")
        if self.usable(self._config.default, endpoint):
            return Decision(self._config.default, "default")
        raise InvalidRequest(
            f"No configured provider accepts batches for endpoint {endpoint}.",
            param="endpoint",
            code="unsupported_endpoint",
        )

    def table(self) -> list[str]:
        """Human-readable routing table, without secrets, for `check-config`."""
        lines = []
        for i, route in enumerate(self._config.routes):
            m = route.match
            parts = [
                f"endpoint={m.endpoint}" if m.endpoint else "",
                f"model={m.model}" if m.model else "",
                f"metadata={dict(m.metadata)}" if m.metadata else "",
            ]
            cond = " ".join(p for p in parts if p) or "*"
            lines.append(f"routes[{i}]  {cond}  ->  {route.to}{self._state(route.to)}")
        lines.append(f"default  *  ->  {self._config.default}{self._state(self._config.default)}")
        return lines

    def _state(self, name: str) -> str:
        return "" if name in self._providers else "  (disabled)"
