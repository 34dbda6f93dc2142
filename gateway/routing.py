"""config.yaml rules -> the ordered providers that may run a batch.

The first rule that matches and has a usable provider wins. Its weighted
targets give the first choice (a seeded draw, so tests are reproducible); the
rule's other targets and its `fallback:` list follow. A provider is usable when
it is enabled, supports the endpoint and its circuit breaker lets calls through.
`default` (with `default_fallback`) is the last resort.

A key's `providers:` allow-list drops the candidates it may not use, everywhere
(rules, header, default). When providers exist for the request but the key may
use none of them, the answer is 403 (the request is fine, the key lacks the
right), not the 400 for an endpoint nobody serves.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from gateway.config import Config, HealConfig, Route, Target
from gateway.errors import InvalidRequest, PermissionDenied, UpstreamError

PROVIDER_HEADER = "X-Batch-Provider"


class Routable(Protocol):
    def supports(self, endpoint: str) -> bool: ...

    def available(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RouteRequest:
    endpoint: str
    models: tuple[str, ...]
    metadata: Mapping[str, str]
    tenant: str
    # The X-Batch-Provider header, already dropped when the caller may not use it.
    provider_header: str | None = None
    # The caller's key's provider allow-list (None: any provider).
    allowed: frozenset[str] | None = None

    def may_use(self, provider: str) -> bool:
        return self.allowed is None or provider in self.allowed


@dataclass(frozen=True, slots=True)
class Sharding:
    """A sharding rule's usable providers (`across` by weight; heal targets in order)."""

    across: tuple[Target, ...]
    max_lines: int | None
    max_bytes: int | None
    heal: HealConfig | None
    heal_on: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    providers: tuple[str, ...]  # first choice, then fallbacks in order
    rule: str  # "routes[0]" or "default", for logs and metrics
    webhook: str | None = None
    # Set when the rule shards: `providers` are then the usable `across` providers.
    sharding: Sharding | None = None


def matches(route: Route, request: RouteRequest) -> bool:
    m = route.match
    if m.endpoint is not None and m.endpoint != request.endpoint:
        return False
    # A file that uses several models matches only a rule that accepts all of them.
    if m.model is not None and not all(fnmatchcase(x, m.model) for x in request.models):
        return False
    if m.tenant is not None and m.tenant != request.tenant:
        return False
    if m.provider_header is not None and m.provider_header != request.provider_header:
        return False
    return not m.metadata or all(request.metadata.get(k) == v for k, v in m.metadata.items())


def weighted_order(targets: Sequence[Target], rng: random.Random) -> list[str]:
    """All targets, the first drawn by weight, the rest by descending weight."""
    if not targets:
        return []
    first = rng.choices(targets, weights=[t.weight for t in targets])[0]
    rest = sorted((t for t in targets if t is not first), key=lambda t: -t.weight)
    return [first.provider, *(t.provider for t in rest)]


def _not_allowed(endpoint: str) -> PermissionDenied:
    return PermissionDenied(
        f"Your API key may not use any provider that accepts batches for {endpoint}.",
        code="provider_not_allowed",
    )


class Router:
    def __init__(self, config: Config, providers: Mapping[str, Routable]) -> None:
        self._config = config
        self._providers = providers
        self._rng = random.Random(config.routing.seed)

    def usable(self, name: str, endpoint: str) -> bool:
        provider = self._providers.get(name)
        return provider is not None and provider.supports(endpoint)

    def _candidates(self, names: Iterable[str], endpoint: str) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for name in names:
            if self.usable(name, endpoint):
                seen.setdefault(name, None)
        return tuple(seen)

    def choose(self, request: RouteRequest) -> Decision:
        endpoint = request.endpoint
        header = request.provider_header
        denied = False

        def permitted(names: Iterable[str]) -> tuple[str, ...]:
            nonlocal denied
            usable = self._candidates(names, endpoint)
            kept = tuple(n for n in usable if request.may_use(n))
            denied = denied or (bool(usable) and not kept)
            return kept

        if header is not None and not any(r.match.provider_header for r in self._config.routes):
            # With no rule about the header, an allowed header names the provider directly.
            if not self.usable(header, endpoint):
                raise InvalidRequest(
                    f"{PROVIDER_HEADER} names no provider that accepts {endpoint}.",
                    param=PROVIDER_HEADER,
                    code="unknown_provider",
                )
            if not permitted((header,)):
                raise _not_allowed(endpoint)
            return self._decide((header,), "header", None)
        for i, route in enumerate(self._config.routes):
            if not matches(route, request):
                continue
            if route.shard is not None:
                if candidates := permitted(t.provider for t in route.shard.across):
                    decision = self._decide(candidates, f"routes[{i}]", route.webhook)
                    return self._sharded(decision, route, request)
                continue
            names = [*weighted_order(route.to, self._rng), *route.fallback]
            if candidates := permitted(names):
                return self._decide(candidates, f"routes[{i}]", route.webhook)
        names = [self._config.default, *self._config.default_fallback]
        if candidates := permitted(names):
            return self._decide(candidates, "default", None)
        if denied:
            raise _not_allowed(endpoint)
        raise InvalidRequest(
            f"No configured provider accepts batches for endpoint {endpoint}.",
            param="endpoint",
            code="unsupported_endpoint",
        )

    def _decide(self, candidates: tuple[str, ...], rule: str, webhook: str | None) -> Decision:
        """Providers whose breaker is open are skipped until their cool-down ends."""
        closed = tuple(n for n in candidates if self._providers[n].available())
        if not closed:
            err = UpstreamError(
                "Every provider for this batch is failing; try again later.",
                code="providers_unavailable",
            )
            err.status = 503
            raise err
        return Decision(closed, rule, webhook)

    def _sharded(self, decision: Decision, route: Route, request: RouteRequest) -> Decision:
        assert route.shard is not None
        shard, heal = route.shard, route.heal
        ok = set(decision.providers)
        heal_on: tuple[str, ...] = ()
        if heal is not None:
            heal_on = tuple(
                n
                for n in heal.retry_failed_lines_on
                if self.usable(n, request.endpoint) and request.may_use(n)
            )
        sharding = Sharding(
            across=tuple(t for t in shard.across if t.provider in ok),
            max_lines=shard.max_lines,
            max_bytes=shard.max_bytes,
            heal=heal if heal_on else None,
            heal_on=heal_on,
        )
        return Decision(decision.providers, decision.rule, decision.webhook, sharding)

    def table(self) -> list[str]:
        """Human-readable routing table, without secrets, for `check-config`."""
        lines = []
        for i, route in enumerate(self._config.routes):
            m = route.match
            parts = [
                f"endpoint={m.endpoint}" if m.endpoint else "",
                f"model={m.model}" if m.model else "",
                f"tenant={m.tenant}" if m.tenant else "",
                f"{PROVIDER_HEADER}={m.provider_header}" if m.provider_header else "",
                f"metadata={dict(m.metadata)}" if m.metadata else "",
            ]
            cond = " ".join(p for p in parts if p) or "*"
            to = route.shard.across if route.shard else route.to
            targets = ", ".join(
                f"{t.provider}{self._state(t.provider)}"
                + (f" (weight {t.weight:g})" if len(to) > 1 else "")
                for t in to
            )
            if route.shard:
                targets = f"shard across {targets}"
                if route.heal:
                    targets += " heal on " + ", ".join(route.heal.retry_failed_lines_on)
            line = f"routes[{i}]  {cond}  ->  {targets}"
            if route.fallback:
                line += "  fallback: " + ", ".join(f + self._state(f) for f in route.fallback)
            lines.append(line)
        line = f"default  *  ->  {self._config.default}{self._state(self._config.default)}"
        if self._config.default_fallback:
            line += "  fallback: " + ", ".join(
                f + self._state(f) for f in self._config.default_fallback
            )
        lines.append(line)
        return lines

    def _state(self, name: str) -> str:
        return "" if name in self._providers else " (disabled)"
