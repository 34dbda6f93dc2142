"""Every Prometheus collector of the gateway, named `gateway_*`, in one place.

Label values are bounded: route templates (never raw paths), provider names
from config, the fixed sets of operations, outcomes, statuses and endpoints.
No ids and no user strings are ever labels.

With several worker processes (`serve --workers N`) prometheus-client's
multiprocess mode aggregates them: each worker writes its samples to
`PROMETHEUS_MULTIPROC_DIR` and `/metrics` merges them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from gateway import __version__
from gateway.config import SHARDED
from gateway.events import ServiceEvents
from gateway.store.base import BatchRecord, UsageRow
from providers.base import ALL_ENDPOINTS, BATCH_STATUSES, TERMINAL_STATUSES

# No `*_created` series per counter and histogram child: in the text format each is one more
# series holding only a start timestamp, and multiprocess mode has none, so without them one
# process and `serve --workers N` expose the same series.
disable_created_metrics()

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
COMPLETION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400)
OPERATIONS = (
    *("upload", "create", "get", "cancel", "get_file", "find", "content"),
    *("list", "list_files", "delete_file"),
)
# What the orphan sweep repairs (gateway/repair.py), and how.
REPAIRS_DONE = (
    ("orphan_batch", "attached"),
    ("orphan_batch", "cancelled"),
    ("duplicate_batch", "cancelled"),
    ("duplicate_upload", "deleted"),
)
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
ACTIVE_STATUSES = tuple(s for s in BATCH_STATUSES if s not in TERMINAL_STATUSES)

# Usage, written once per batch and model (gateway.accounting). `tenant` is empty unless
# config `usage.tenant_labels`; models are those batches ran.
USAGE_TOKENS = Counter(
    "gateway_usage_tokens_total",
    "Tokens used by ended batches",
    ["provider", "model", "tenant", "kind"],
)
USAGE_COST = Counter(
    "gateway_usage_cost_usd_total",
    "Cost of ended batches in USD, at the price recorded with each usage row",
    ["provider", "model", "tenant"],
)
UNPRICED = Counter(
    "gateway_usage_unpriced_total",
    "Usage rows recorded with a null cost: the model's price is not known",
    ["provider", "model"],
)
USAGE_ROWS = Counter("gateway_usage_rows_total", "Usage rows written", ["provider"])
BUDGET_USED = Gauge(
    "gateway_budget_used_usd",
    "A key's spend this month (recorded plus committed by running batches), as last checked",
    ["key"],
    multiprocess_mode="max",
)
BUDGET_LIMIT = Gauge(
    "gateway_budget_limit_usd", "A key's monthly budget", ["key"], multiprocess_mode="max"
)

HTTP_REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "gateway_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "gateway_request_overhead_seconds",
    "Time a request spent in the gateway itself (total minus upstream waits)",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_REQUESTS = Counter(
    "gateway_upstream_requests_total",
    "Calls to providers by outcome",
    ["provider", "operation", "outcome"],
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time of one call to a provider",
    ["provider", "operation"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_RETRIES = Counter(
    "gateway_upstream_retries_total", "Provider calls retried", ["provider", "operation"]
)
BREAKER = Gauge(
    "gateway_circuit_breaker_state",
    "Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
    ["provider"],
    multiprocess_mode="max",
)
FALLBACKS = Counter(
    "gateway_fallbacks_total",
    "Creates moved to the next provider",
    ["from_provider", "to_provider", "reason"],
)
BATCHES_CREATED = Counter(
    "gateway_batches_created_total", "Batches created", ["provider", "endpoint"]
)
BATCHES = Gauge(
    "gateway_batches",
    "Batches in the store by provider and status",
    ["provider", "status"],
    multiprocess_mode="mostrecent",
)
BATCH_OLDEST = Gauge(
    "gateway_batch_oldest_seconds",
    "Age of the oldest batch in each active status (0 when none)",
    ["provider", "status"],
    multiprocess_mode="mostrecent",
)
BATCHES_TERMINAL = Counter(
    "gateway_batches_terminal_total",
    "Batches that reached a terminal status",
    ["provider", "status"],
)
BATCH_COMPLETION = Histogram(
    "gateway_batch_completion_seconds",
    "Time from create to completed",
    ["provider"],
    buckets=COMPLETION_BUCKETS,
)
BATCH_REQUESTS = Counter(
    "gateway_batch_requests_total",
    "Requests inside batches that ended, by result",
    ["provider", "result"],
)
SHARD_CHILDREN = Histogram(
    "gateway_shard_children_per_batch",
    "Child batches per sharded batch when it is split",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128),
)
SHARD_CHILDREN_CREATED = Counter(
    "gateway_shard_children_total",
    "Child batches of sharded batches, by provider and kind (split or heal)",
    ["provider", "kind"],
)
HEAL_LINES = Counter(
    "gateway_heal_lines_total",
    "Failed lines of sharded batches re-run on another provider",
    ["from_provider", "to_provider"],
)
HEALED_LINES = Counter(
    "gateway_healed_lines_total",
    "Re-run lines that succeeded on the provider they were re-run on",
    ["from_provider", "to_provider"],
)
FAILED_EVERYWHERE = Counter(
    "gateway_shard_failed_lines_total",
    "Lines of sharded batches that failed on every provider they were tried on",
)
FILE_BYTES = Counter("gateway_file_bytes_total", "File bytes through the gateway", ["direction"])
ROUTING = Counter(
    "gateway_routing_decisions_total",
    "Routing decisions by rule and provider",
    ["rule", "provider"],
)
UPSTREAM_REPAIRS = Counter(
    "gateway_upstream_repairs_total",
    "Upstream batches and uploads the orphan sweep attached, cancelled or deleted",
    ["provider", "kind", "action"],
)
PROVIDER_DELETIONS = Counter(
    "gateway_provider_deletions_total",
    "Copies deleted at providers by retention (outcome: deleted, failed)",
    ["provider", "outcome"],
)
BUILD_INFO = Gauge(
    "gateway_build_info", "Version of the running gateway", ["version"], multiprocess_mode="max"
)
RELOADS = Counter("gateway_config_reloads_total", "Config reloads by result", ["result"])


def initialize(providers: Iterable[str]) -> None:
    """Create the label sets users alert on, so they read 0 rather than nothing."""
    BUILD_INFO.labels(__version__).set(1)
    for result in ("success", "failure"):
        RELOADS.labels(result)
    for direction in ("upload", "download"):
        FILE_BYTES.labels(direction)
    for provider in providers:
        BREAKER.labels(provider).set(0)
        for status in TERMINAL_STATUSES:
            BATCHES_TERMINAL.labels(provider, status)
        for result in ("completed", "failed"):
            BATCH_REQUESTS.labels(provider, result)
        for outcome in ("deleted", "failed"):
            PROVIDER_DELETIONS.labels(provider, outcome)
        for kind, action in REPAIRS_DONE:
            UPSTREAM_REPAIRS.labels(provider, kind, action)
        for operation in OPERATIONS:
            UPSTREAM_REQUESTS.labels(provider, operation, "ok")
            UPSTREAM_RETRIES.labels(provider, operation)


class UpstreamMetrics:
    """The resilience layer's observer: upstream calls, retries and breaker state."""

    def __init__(self) -> None:
        # labels() takes a lock and builds a key on every call; an attempt sits on the
        # request's path, so its two children are looked up once.
        self._children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}

    def attempt(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        key = (provider, operation, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                UPSTREAM_REQUESTS.labels(provider, operation, outcome),
                UPSTREAM_DURATION.labels(provider, operation),
            )
        children[0].inc()
        children[1].observe(seconds)
        add_upstream_wait(seconds)

    def retry(self, provider: str, operation: str) -> None:
        UPSTREAM_RETRIES.labels(provider, operation).inc()

    def breaker(self, provider: str, state: str) -> None:
        BREAKER.labels(provider).set(BREAKER_VALUES[state])


class BatchMetrics(ServiceEvents):
    """The service's events: creates, routing, fallbacks, terminal transitions, usage."""

    def __init__(self, *, tenant_labels: bool = False) -> None:
        # Tenants may be many: their label is empty unless config `usage.tenant_labels`.
        self.tenant_labels = tenant_labels

    def routed(self, rule: str, provider: str) -> None:
        ROUTING.labels(rule, provider).inc()

    def created(self, provider: str, endpoint: str) -> None:
        if endpoint in ALL_ENDPOINTS:
            BATCHES_CREATED.labels(provider, endpoint).inc()

    def fallback(self, from_provider: str, to_provider: str, reason: str) -> None:
        FALLBACKS.labels(from_provider, to_provider, reason).inc()

    def terminal(self, record: BatchRecord) -> None:
        status = record.status
        BATCHES_TERMINAL.labels(record.provider, status).inc()
        counts = record.object.get("request_counts") or {}
        if record.provider != SHARDED:  # a sharded batch's requests count in its children
            BATCH_REQUESTS.labels(record.provider, "completed").inc(counts.get("completed", 0))
            BATCH_REQUESTS.labels(record.provider, "failed").inc(counts.get("failed", 0))
        if status == "completed":
            ended = record.object.get("completed_at") or int(time.time())
            BATCH_COMPLETION.labels(record.provider).observe(max(0, ended - record.created_at))

    def provider_deletion(self, provider: str, outcome: str) -> None:
        PROVIDER_DELETIONS.labels(provider, outcome).inc()

    def repaired(self, provider: str, kind: str, action: str) -> None:
        UPSTREAM_REPAIRS.labels(provider, kind, action).inc()

    def file_bytes(self, direction: str, size: int) -> None:
        FILE_BYTES.labels(direction).inc(size)

    def usage_recorded(self, rows: Sequence[UsageRow]) -> None:
        for row in rows:
            tenant = row.tenant if self.tenant_labels else ""
            labels = (row.provider, row.model, tenant)
            USAGE_TOKENS.labels(*labels, "prompt").inc(row.prompt_tokens)
            USAGE_TOKENS.labels(*labels, "completion").inc(row.completion_tokens)
            USAGE_TOKENS.labels(*labels, "cached").inc(row.cached_tokens)
            USAGE_TOKENS.labels(*labels, "reasoning").inc(row.reasoning_tokens)
            USAGE_ROWS.labels(row.provider).inc()
            if row.cost_usd is None:
                UNPRICED.labels(row.provider, row.model).inc()
            else:
                USAGE_COST.labels(*labels).inc(row.cost_usd)

    def budget(self, key: str, used_usd: float, limit_usd: float) -> None:
        BUDGET_USED.labels(key).set(used_usd)
        BUDGET_LIMIT.labels(key).set(limit_usd)

    def sharded(self, providers: Sequence[str], kind: str) -> None:
        if kind == "split":
            SHARD_CHILDREN.observe(len(providers))
        for provider in providers:
            SHARD_CHILDREN_CREATED.labels(provider, kind).inc()

    def healed(self, from_provider: str, to_provider: str, sent: int, succeeded: int) -> None:
        HEAL_LINES.labels(from_provider, to_provider).inc(sent)
        HEALED_LINES.labels(from_provider, to_provider).inc(succeeded)

    def failed_everywhere(self, lines: int) -> None:
        FAILED_EVERYWHERE.inc(lines)


_seen_batch_labels: set[tuple[str, str]] = set()


def set_batch_gauges(
    counts: Iterable[tuple[str, str, int]], oldest: Iterable[tuple[str, str, float]]
) -> None:
    """Replace the store-derived gauges; label sets that vanished drop to 0."""
    current = {(p, s): n for p, s, n in counts}
    for key in _seen_batch_labels - current.keys():
        BATCHES.labels(*key).set(0)
    for (provider, status), n in current.items():
        BATCHES.labels(provider, status).set(n)
    _seen_batch_labels.update(current)
    ages = {(p, s): age for p, s, age in oldest}
    for provider in {p for p, _ in _seen_batch_labels}:
        for status in ACTIVE_STATUSES:
            BATCH_OLDEST.labels(provider, status).set(ages.get((provider, status), 0.0))


# Upstream wait of the request being handled (a one-item list shared with child tasks).
upstream_wait: ContextVar[list[float] | None] = ContextVar("upstream_wait", default=None)


def add_upstream_wait(seconds: float) -> None:
    waited = upstream_wait.get()
    if waited is not None:
        waited[0] += seconds


# Labelled children by label values: `labels()` costs microseconds on every request.
_http_children: dict[tuple[str, str, int], tuple[Counter, Histogram, Histogram]] = {}


def record_http(route: str, method: str, status: int, elapsed: float, waited: float) -> None:
    key = (route, method, status)
    children = _http_children.get(key)
    if children is None:
        children = _http_children[key] = (
            HTTP_REQUESTS.labels(route, method, str(status)),
            HTTP_DURATION.labels(route, method),
            OVERHEAD.labels(route),
        )
    requests, duration, overhead = children
    requests.inc()
    duration.observe(elapsed)
    overhead.observe(max(0.0, elapsed - waited))


def exposition() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
