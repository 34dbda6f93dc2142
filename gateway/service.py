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
from dataclasses import replace
from functools import partial
from typing import Any

import orjson

from gateway import ids
from gateway.batch_sync import (
    CANCEL_PENDING,
    TERMINAL_CACHE_SIZE,
    BatchSync,
    BatchView,
    Route,
)
from gateway.blobs import Blobs
from gateway.config import Config, KeyConfig
from gateway.errors import InvalidRequest, QuotaExceeded
from gateway.events import ServiceEvents
from gateway.file_service import FileUseCases, no_such
from gateway.routing import Router, RouteRequest
from gateway.store import BatchRecord, FileRecord, Page, Store
from gateway.store.base import UnknownCursor
from gateway.wire import CreateBatchBody, new_batch_object
from providers.base import (
    TERMINAL_STATUSES,
    BatchRequest,
    InputFile,
    Provider,
    ProviderError,
    UpstreamBatch,
)

log = logging.getLogger("gateway.service")

# Refreshes in flight below which a retrieve overlaps its row read with the provider call.
OVERLAP_BELOW = 4

INTERRUPTED = {
    "code": "gateway_interrupted",
    "message": "The gateway stopped while creating this batch, and the provider has no "
    "record of it; create it again.",
    "param": None,
    "line": None,
}


class GatewayService(FileUseCases, BatchSync):
    def __init__(
        self,
        store: Store,
        blobs: Blobs,
        providers: Mapping[str, Provider],
        router: Router,
        config: Config,
        events: ServiceEvents | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.events = events or ServiceEvents()
        self._refreshing: dict[str, asyncio.Future[BatchView]] = {}
        # Terminal batches by id: (tenant, object, serialized body), least recent first.
        self._terminal: OrderedDict[str, tuple[str, dict[str, Any], bytes]] = OrderedDict()
        # When each active batch was last refreshed (for `retrieve_cache_seconds`).
        self._refreshed_at: dict[str, float] = {}
        self._routes: dict[str, Route] = {}
        # Serializes "count active batches, then insert" per tenant (one process).
        self._admission: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Set when a batch ends here: wakes the keeper of output files.
        self.batch_ended = asyncio.Event()
        self.reconfigure(config, providers, router)

    def reconfigure(
        self, config: Config, providers: Mapping[str, Provider], router: Router
    ) -> None:
        """Swap in a reloaded config; calls already running keep the objects they hold."""
        self.config = config
        self.limits = config.limits
        self.providers = providers
        self.router = router
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
            await self.store.insert_batch(record)
        try:
            upstream = await self._create_upstream(record, file, request, decision.providers)
        except BaseException:
            await self.store.delete_batch(record.id)
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

    async def _create_upstream(
        self,
        record: BatchRecord,
        file: FileRecord,
        request: BatchRequest,
        candidates: tuple[str, ...],
    ) -> UpstreamBatch:
        """Try each candidate in order; one upstream batch at most, never two."""
        last: ProviderError | None = None
        for i, name in enumerate(candidates):
            provider = self.providers[name]
            record.provider = name
            try:
                return await self._create_at(provider, file, request)
            except ProviderError as exc:
                if exc.kind == "bad_request":
                    raise  # about the input itself: another provider would say the same
                if exc.ambiguous and (found := await self._find(provider, record.id)):
                    return found
                last = exc
                if i + 1 < len(candidates):
                    self.events.fallback(name, candidates[i + 1], exc.kind)
                    log.warning(
                        "batch %s: create on %s failed (%s); trying %s",
                        record.id,
                        name,
                        exc.kind,
                        candidates[i + 1],
                    )
        assert last is not None
        raise last

    async def _create_at(
        self, provider: Provider, file: FileRecord, request: BatchRequest
    ) -> UpstreamBatch:
        upstream_file = await self._upstream_file(provider, file)
        try:
            return await provider.create_batch(replace(request, input_file_id=upstream_file))
        except ProviderError as exc:
            if exc.kind != "not_found":
                raise
        # The provider no longer has our cached upload (expired or deleted): upload again.
        await self.store.delete_upstream_file(file.id, provider.name)
        upstream_file = await self._upstream_file(provider, file)
        return await provider.create_batch(replace(request, input_file_id=upstream_file))

    async def _find(self, provider: Provider, batch_id: str) -> UpstreamBatch | None:
        try:
            return await provider.find_batch(batch_id)
        except ProviderError as exc:
            log.warning("batch %s: lookup on %s failed (%s)", batch_id, provider.name, exc.kind)
            return None

    async def retrieve_batch(self, tenant: str, batch_id: str) -> BatchView:
        cached = self._terminal.get(batch_id)
        if cached is not None and cached[0] == tenant:
            self._terminal.move_to_end(batch_id)
            return BatchView(cached[1], body=cached[2])
        ttl = self.config.retrieve_cache_seconds
        fresh = ttl and time.monotonic() - self._refreshed_at.get(batch_id, -ttl) < ttl
        # Reading the row during the provider call costs a task: it pays while the loop
        # idles on providers, not in a busy process, which then reads the row first.
        route = self._routes.get(batch_id) if len(self._refreshing) < OVERLAP_BELOW else None
        if route is not None and route.tenant == tenant and not fresh:
            return await self.refresh_routed(
                batch_id, route, partial(self._batch, tenant, batch_id)
            )
        record = await self._batch(tenant, batch_id)
        if record.status in TERMINAL_STATUSES:
            body = orjson.dumps(record.object)
            self._terminal[batch_id] = (tenant, record.object, body)
            if len(self._terminal) > TERMINAL_CACHE_SIZE:
                self._terminal.popitem(last=False)
            return BatchView(record.object, body=body)
        if record.pending or fresh:
            return BatchView(record.object)
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

    async def reconcile_pending(self, grace_seconds: float) -> int:
        """Pending rows older than the grace period are creates a dead process never finished.

        Each is attached to the upstream batch tagged with its id, or marked failed;
        none is left as a silent orphan. Returns how many rows were settled.
        """
        settled = 0
        cutoff = time.time() - grace_seconds
        for record in await self.store.pending_batches():
            if record.created_at > cutoff:
                continue
            provider = self.providers.get(record.provider)
            if provider is None:
                continue
            try:
                found = await provider.find_batch(record.id)
            except ProviderError as exc:
                log.warning("batch %s: reconciliation postponed (%s)", record.id, exc.kind)
                continue
            record.pending = False
            settled += 1
            if found is not None:
                record.upstream_id = found.id
                await self._apply(record, found)
                log.warning(
                    "batch %s: interrupted create attached to its upstream batch", record.id
                )
                continue
            record.object.update(
                status="failed",
                failed_at=int(time.time()),
                errors={"object": "list", "data": [INTERRUPTED]},
            )
            if await self.store.update_batch(record, event=self._event(record)):
                self.events.terminal(record)
            log.warning("batch %s: create was interrupted by a restart; marked failed", record.id)
        return settled

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

    async def _batch(self, tenant: str, batch_id: str) -> BatchRecord:
        record = await self.store.get_batch(batch_id, tenant) if ids.looks_valid(batch_id) else None
        if record is None:
            raise no_such("Batch", batch_id, "batch_id")
        return record

    async def _upstream_file(self, provider: Provider, file: FileRecord) -> str:
        """Upload the input file to a provider once; later batches reuse it."""
        cached = await self.store.get_upstream_file(file.id, provider.name)
        if cached is not None:
            return cached
        assert file.blob is not None and file.endpoint is not None
        upstream_id = await provider.upload_file(
            InputFile(
                path=self.blobs.local_path(file.blob),
                opener=partial(self.blobs.open, file.blob),
                filename=file.filename,
                bytes=file.bytes,
                line_count=file.line_count or 0,
                endpoint=file.endpoint,
                models=file.models,
            )
        )
        await self.store.put_upstream_file(file.id, provider.name, upstream_id)
        return upstream_id
