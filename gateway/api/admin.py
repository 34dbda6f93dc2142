"""/v1/gateway/admin/: the operators' view of every tenant's batches and the providers.

Admin key only (gateway.auth). Upstream batch ids appear here, since operators need them
to talk to a provider; provider keys, hosts and URLs never do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway import ids
from gateway.api import cursor_param, int_param, json_response, service
from gateway.config import SHARDED
from gateway.errors import InvalidRequest
from gateway.file_service import no_such
from gateway.service import GatewayService
from gateway.store import BatchRecord, UnknownCursor
from gateway.store.base import AdminFilter
from providers.base import TERMINAL_STATUSES

MAX_PAGE = 100
DEFAULT_PAGE = 20


def _seconds(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", raw):  # ASCII digits only: str.isdigit takes "²"
        raise InvalidRequest(f"'{name}' must be Unix seconds.", param=name)
    return int(raw)


def _filter(request: web.Request) -> AdminFilter:
    query = request.query
    key, value = query.get("metadata_key"), query.get("metadata_value")
    if (key is None) != (value is None):
        raise InvalidRequest(
            "'metadata_key' and 'metadata_value' go together.",
            param="metadata_value" if value is None else "metadata_key",
        )
    return AdminFilter(
        tenant=query.get("tenant") or None,
        provider=query.get("provider") or None,
        status=query.get("status") or None,
        created_after=_seconds(request, "created_after"),
        created_before=_seconds(request, "created_before"),
        metadata=(key, value) if key is not None and value is not None else None,
    )


def _admin_batch(record: BatchRecord, rules: dict[str, str]) -> dict[str, Any]:
    return {
        "batch": record.object,
        "tenant": record.tenant,
        "provider": record.provider,
        "upstream_id": record.upstream_id,
        "rule": rules.get(record.id),
    }


async def _admin_batches(gateway: GatewayService, records: Sequence[BatchRecord]) -> list[Any]:
    rules = await gateway.store.routing_rules([r.id for r in records])
    return [_admin_batch(r, rules) for r in records]


async def list_batches(request: web.Request) -> web.Response:
    gateway = service(request)
    where = _filter(request)
    limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    after = cursor_param(request)
    try:
        if after is not None and not ids.looks_valid(after):
            raise UnknownCursor(after)
        page = await gateway.store.admin_batches(where, after=after, limit=limit)
    except UnknownCursor:
        raise InvalidRequest("'after' does not name a batch.", param="after") from None
    data = await _admin_batches(gateway, page.data)
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": page.data[0].id if page.data else None,
            "last_id": page.data[-1].id if page.data else None,
            "has_more": page.has_more,
        }
    )


async def _record(gateway: GatewayService, batch_id: str) -> BatchRecord:
    record = await gateway.store.get_batch(batch_id) if ids.looks_valid(batch_id) else None
    if record is None:
        raise no_such("Batch", batch_id, "batch_id")
    return record


async def _detail(gateway: GatewayService, record: BatchRecord) -> dict[str, Any]:
    events = await gateway.store.batch_events(record.id)
    children = (
        [child for _, child in await gateway.store.shard_children(record.id)]
        if record.provider == SHARDED
        else []
    )
    answer = _admin_batch(record, await gateway.store.routing_rules([record.id]))
    if record.provider == SHARDED and record.status not in TERMINAL_STATUSES:
        answer["batch"] = await gateway.shard_view(record)  # progress from its children
    answer["history"] = [{"status": e.status, "at": e.at} for e in events if e.kind == "status"]
    answer["attempts"] = [
        {"provider": e.provider, "at": e.at, "outcome": e.outcome, "error": e.detail}
        for e in events
        if e.kind == "attempt"
    ]
    answer["children"] = await _admin_batches(gateway, children)
    return answer


async def retrieve_batch(request: web.Request) -> web.Response:
    gateway = service(request)
    record = await _record(gateway, request.match_info["batch_id"])
    return json_response(await _detail(gateway, record))


async def refresh_batch(request: web.Request) -> web.Response:
    """Ask the provider now (a sharded batch: about each running child; the poller still
    makes its splits, heals and merge), then answer as retrieve."""
    gateway = service(request)
    record = await _record(gateway, request.match_info["batch_id"])
    if record.status not in TERMINAL_STATUSES and not record.pending:
        running = [record]
        if record.provider == SHARDED:
            children = await gateway.store.shard_children(record.id)
            running = [
                c for _, c in children if c.upstream_id and c.status not in TERMINAL_STATUSES
            ]
        for batch in running:
            await gateway.refresh(batch)  # a provider that is down leaves the row as it is
        record = await _record(gateway, record.id)
    return json_response(await _detail(gateway, record))


async def list_providers(request: web.Request) -> web.Response:
    gateway = service(request)
    active: dict[str, int] = {}
    for provider, status, count in await gateway.store.count_batches():
        if status not in TERMINAL_STATUSES:
            active[provider] = active.get(provider, 0) + count
    data = []
    for name, config in gateway.config.providers.items():
        running = gateway.providers.get(name)
        breaker = getattr(running, "breaker", None)
        window = getattr(running, "window", None)
        health = window.health() if window is not None else None
        data.append(
            {
                "name": name,
                "type": config.type,
                "enabled": running is not None,
                "breaker": breaker.state if breaker is not None else None,
                "calls": health.calls if health else 0,
                "error_rate": health.error_rate if health else None,
                "latency_p50_ms": health.latency_p50_ms if health else None,
                "latency_p95_ms": health.latency_p95_ms if health else None,
                "active_batches": active.get(name, 0),
            }
        )
    return json_response({"object": "list", "data": data, "routes": gateway.router.table()})
