"""The batch use cases: create, retrieve, list, cancel, refresh. No HTTP in here.

The file use cases (upload, content, delete, expiry) live in `file_service`.

Provider ids stop at this module: everything returned is keyed by gateway ids,
and `batch_sync` holds the one place an upstream batch becomes a public object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from functools import partial
from typing import Any

import orjson

from gateway import ids
from gateway.batch_sync import (
    CANCEL_PENDING,
    TERMINAL_CACHE_SIZE,
    BatchSync,
    BatchView,
    Location,
)
from gateway.blobs import Blobs
from gateway.config import SHARDED, Config, KeyConfig
from gateway.creates import KeyedLocks, Unsettled
from gateway.errors import InvalidRequest, QuotaExceeded
from gateway.estimate import input_tokens
from gateway.events import ServiceEvents
from gateway.file_service import no_such
from gateway.pricing import Pricing, estimated_cost, month_start
from gateway.routing import Router, RouteRequest
from gateway.shard_plan import refuse_oversized
from gateway.sharding import ShardUseCases
from gateway.store import BatchRecord, FileRecord, Page, Store
from gateway.store.base import BatchEvent, UnknownCursor
from gateway.wire import CreateBatchBody, new_batch_object
from providers.base import (
    TERMINAL_STATUSES,
    BatchRequest,
    Provider,
    ProviderError,
)

log = logging.getLogger("gateway.service")

# Refreshes in flight below which a retrieve overlaps its row read with the provider call.
OVERLAP_BELOW = 4


class GatewayService(ShardUseCases, BatchSync):
    def __init__(
        self,
        store: Store,
        blobs: Blobs,
        providers: Mapping[str, Provider],
        router: Router,
        config: Config,
        events: ServiceEvents | None = None,
        *,
        instance_id: str,
    ) -> None:
        # The process instance (`gateway.instance`) that owns this service's pending creates.
        self.instance_id = instance_id
        self._settle_after: dict[str, float] = {}
        self._starting: set[str] = set()
        self._uploading = KeyedLocks()
        self._settling = asyncio.Lock()
        self.store = store
        self.blobs = blobs
        self.events = events or ServiceEvents()
        self._refreshing: dict[str, asyncio.Future[BatchView]] = {}
        # Terminal batches by id: (tenant, object, serialized body), least recent first.
        self._terminal: OrderedDict[str, tuple[str, dict[str, Any], bytes]] = OrderedDict()
        # When each active batch was last refreshed (for `retrieve_cache_seconds`).
        self._refreshed_at: dict[str, float] = {}
        self._locations: dict[str, Location] = {}
        # Serializes "count active batches, then insert" per tenant (one process).
        self._admission: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Set when a batch ends here: wakes the keeper of output files.
        self.batch_ended = asyncio.Event()
        # Set when a batch ends here or its output is kept: wakes the accountant.
        self.usage_due = asyncio.Event()
        self.reconfigure(config, providers, router)

    def reconfigure(
        self, config: Config, providers: Mapping[str, Provider], router: Router
    ) -> None:
        """Swap in a reloaded config; calls already running keep the objects they hold."""
        self.config = config
        self.limits = config.limits
        self.providers = providers
        self.router = router
        self.pricing = Pricing(config)
        self._keys = {key.name: key for key in config.auth.keys}

    # batches

    async def create_batch(
        self, tenant: str, body: CreateBatchBody, *, provider_header: str | None = None
    ) -> dict[str, Any]:
        file = await self.get_file(tenant, body.input_file_id, "input_file_id")
        if file.purpose != "batch" or file.blob is None:
            raise InvalidRequest("The input file must have purpose 'batch'.", param="input_file_id")
        if file.endpoint != body.endpoint:
            raise InvalidRequest(
                f"The input file's requests use {file.endpoint}, not {body.endpoint}.",
                param="endpoint",
                code="endpoint_mismatch",
            )
        key = self._keys.get(tenant)
        may_pick = key.allow_provider_header if key else self.config.auth.allow_provider_header
        allowed = frozenset(key.providers) if key and key.providers is not None else None
        decision = self.router.choose(
            RouteRequest(
                endpoint=body.endpoint,
                models=file.models,
                metadata=body.metadata or {},
                tenant=tenant,
                provider_header=provider_header if may_pick else None,
                allowed=allowed,
            )
        )
        if decision.sharding is None:
            refuse_oversized(file, self.limits.max_file_lines, self.limits.max_file_bytes)
        now = int(time.time())
        model = file.models[0] if len(file.models) == 1 else None
        batch_id = ids.new_batch_id()
        expiry = body.output_expires_after
        record = BatchRecord(
            id=batch_id,
            tenant=tenant,
            provider=decision.providers[0],
            input_file_id=file.id,
            created_at=now,
            object=new_batch_object(batch_id, body, now, model, file.line_count or 0),
            output_ttl=expiry.seconds if expiry else None,
            webhook=decision.webhook or (key.webhook if key else None),
            owner=self.instance_id,
        )
        request = BatchRequest(
            input_file_id="",
            endpoint=body.endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
            output_expires_after=expiry.model_dump() if expiry else None,
            gateway_batch_id=batch_id,
        )
        # Written before the upstream call, so a crash in between leaves a visible pending row.
        async with self._admission[tenant]:
            await self._check_active_quota(key)
            estimate = await self._check_budget(key, decision.providers[0], file)
            if decision.sharding is not None:
                await self.create_sharded(record, file, decision.sharding)
            else:
                await self.store.insert_batch(record)
            if estimate:
                await self.store.put_estimate(batch_id, tenant, estimate, now)
        await self.store.add_batch_event(
            BatchEvent(batch_id, now, "routed", None, record.provider, None, decision.rule)
        )
        if decision.sharding is not None:
            self.events.routed(decision.rule, record.provider)
            log.info("batch %s created, sharded (%s)", record.id, decision.rule)
            return record.object
        try:
            upstream = await self._create_upstream(record, file, request, decision.providers)
        except Unsettled:
            # The provider may have it: the client gets the batch, the gateway settles it.
            await self.hand_over(record)
            self.events.routed(decision.rule, record.provider)
            return record.object
        except ProviderError:
            raise  # definitely not made: the row is already gone (or failed)
        except Exception:
            await self.orphan(record)
            raise
        record.upstream_id = upstream.id
        record.pending = False
        if self.config.routing.expose_provider:
            record.object["metadata"] = {
                **(body.metadata or {}),
                "gateway_provider": record.provider,
            }
        await self._apply(record, upstream)
        self.events.routed(decision.rule, record.provider)
        self.events.created(record.provider, body.endpoint)
        log.info("batch %s created on provider %s (%s)", record.id, record.provider, decision.rule)
        return record.object

    async def retrieve_batch(self, tenant: str, batch_id: str) -> BatchView:
        cached = self._terminal.get(batch_id)
        if cached is not None and cached[0] == tenant:
            self._terminal.move_to_end(batch_id)
            return BatchView(cached[1], body=cached[2])
        ttl = self.config.retrieve_cache_seconds
        fresh = ttl and time.monotonic() - self._refreshed_at.get(batch_id, -ttl) < ttl
        # Reading the row during the provider call costs a task: it pays while the loop
        # idles on providers, not in a busy process, which then reads the row first.
        where = self._locations.get(batch_id) if len(self._refreshing) < OVERLAP_BELOW else None
        if where is not None and where.tenant == tenant and not fresh:
            return await self.refresh_located(
                batch_id, where, partial(self._batch, tenant, batch_id)
            )
        record = await self._batch(tenant, batch_id)
        # Cached once final: ended and accounted (accounting adds `usage`), if it is on.
        final = record.object.get("usage") is not None or not self.config.usage.enabled
        if record.status in TERMINAL_STATUSES and final:
            body = orjson.dumps(record.object)
            self._terminal[batch_id] = (tenant, record.object, body)
            if len(self._terminal) > TERMINAL_CACHE_SIZE:
                self._terminal.popitem(last=False)
            return BatchView(record.object, body=body)
        if record.pending or fresh or record.status in TERMINAL_STATUSES:
            return BatchView(record.object)
        if record.provider == SHARDED:
            return BatchView(await self.shard_view(record))
        return await self.refresh(record)

    async def list_batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        try:
            if after is not None and not ids.looks_valid(after):
                raise UnknownCursor(after)
            return await self.store.list_batches(tenant, after=after, limit=limit)
        except UnknownCursor:
            raise InvalidRequest("'after' does not name a batch of yours.", param="after") from None

    async def cancel_batch(self, tenant: str, batch_id: str) -> dict[str, Any]:
        record = await self._batch(tenant, batch_id)
        if record.status in TERMINAL_STATUSES or record.status == "cancelling":
            raise InvalidRequest(
                f"Cannot cancel a batch with status '{record.status}'.",
                code="batch_not_cancellable",
            )
        if record.provider == SHARDED:
            return await self.cancel_sharded(record)
        if record.pending or record.upstream_id is None:
            raise InvalidRequest(
                "The batch is still being created; retry shortly.", code="batch_pending"
            )
        provider = self._provider(record.provider)
        upstream = await provider.cancel_batch(record.upstream_id)
        # Some providers (anyapi.ai) answer cancel with a partial object: re-read the whole batch.
        try:
            upstream = await provider.get_batch(record.upstream_id)
        except ProviderError as exc:
            log.warning("batch %s: re-read after cancel failed (%s)", record.id, exc.kind)
        if upstream.status in CANCEL_PENDING:
            upstream.status = "cancelling"
        await self._apply(record, upstream)
        return record.object

    # internals

    async def _check_active_quota(self, key: KeyConfig | None) -> None:
        limit = key.limits.max_active_batches if key else None
        if key is not None and limit is not None:
            if await self.store.count_active_batches(key.name) >= limit:
                raise QuotaExceeded(
                    f"This key already has {limit} active batches, its limit; wait for one "
                    "to end or cancel one.",
                    code="active_batch_limit_exceeded",
                )

    async def _check_budget(
        self, key: KeyConfig | None, provider: str, file: FileRecord
    ) -> float | None:
        """Refuse a create that would take the key past its monthly budget; returns the
        batch's estimated cost, counted as committed until its usage is recorded."""
        limit = key.limits.max_spend_usd if key else None
        if key is None or limit is None:
            return None
        spent, committed = await self.store.spend(key.name, month_start(time.time()))
        tokens = await input_tokens(self.blobs, file)
        estimate = estimated_cost(self.pricing, provider, file, tokens)
        self.events.budget(key.name, spent + committed, limit)
        if spent + committed + estimate > limit:
            raise QuotaExceeded(
                f"This key's monthly budget is ${limit:,.2f}: ${spent:,.2f} is spent this month"
                f" and ${committed:,.2f} committed by running batches, so this batch (about"
                f" ${estimate:,.2f}) would go past it. The budget resets on the 1st (UTC).",
                code="insufficient_quota",
            )
        return estimate

    async def _batch(self, tenant: str, batch_id: str) -> BatchRecord:
        record = await self.store.get_batch(batch_id, tenant) if ids.looks_valid(batch_id) else None
        if record is None:
            raise no_such("Batch", batch_id, "batch_id")
        return record
