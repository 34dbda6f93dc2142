"""The use cases: upload, create, retrieve, list, cancel, content. No HTTP in here.

Provider ids stop at this module: everything returned is keyed by gateway ids,
and `_normalize` is the one place an upstream batch becomes a public object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import ids
from gateway.blobs import LocalBlobs
from gateway.config import LimitsConfig
from gateway.errors import InvalidRequest, NotFound, PayloadTooLarge
from gateway.jsonl import JSONLError, JSONLValidator, TooLarge
from gateway.routing import Router
from gateway.store import BatchRecord, FileRecord, Page, Store
from gateway.store.base import UnknownCursor
from gateway.wire import CreateBatchBody, ExpiresAfter, new_batch_object
from providers.base import (
    TERMINAL_STATUSES,
    TIMESTAMP_FIELDS,
    BatchRequest,
    ByteStream,
    InputFile,
    Provider,
    ProviderError,
    UpstreamBatch,
)

log = logging.getLogger("gateway.service")

BATCH_FILE_TTL = 30 * 86_400  # OpenAI's default expiry for purpose=batch uploads
_CANCEL_PENDING = frozenset({"validating", "in_progress", "finalizing"})


@dataclass(slots=True)
class BatchView:
    object: dict[str, Any]
    # True when the provider could not be reached and the stored state is shown.
    stale: bool = False


def _no_such(kind: str, object_id: str, param: str | None = None) -> NotFound:
    shown = object_id if ids.looks_valid(object_id) else "that id"
    return NotFound(f"No such {kind}: {shown}", param=param, code=None)


class GatewayService:
    def __init__(
        self,
        store: Store,
        blobs: LocalBlobs,
        providers: Mapping[str, Provider],
        router: Router,
        limits: LimitsConfig,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.providers = providers
        self.router = router
        self.limits = limits
        self._refreshing: dict[str, asyncio.Future[BatchView]] = {}

    # files

    async def upload(
        self,
        tenant: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        expires_after: ExpiresAfter | None = None,
    ) -> FileRecord:
        """Stream an input file to a blob while validating it; all or nothing."""
        file_id = ids.new_file_id()
        validator = JSONLValidator(
            max_bytes=self.limits.max_file_bytes,
            max_lines=self.limits.max_file_lines,
            max_line_bytes=self.limits.max_line_bytes,
        )
        size = 0
        writer = self.blobs.writer(file_id)
        try:
            async for chunk in chunks:
                validator.feed(chunk)
                await writer.write(chunk)  # hashed and written on a worker thread
                size += len(chunk)
            summary = validator.finish()
            sha256 = await writer.finish()
        except JSONLError as exc:
            writer.abort()
            raise InvalidRequest(
                f"Invalid batch input file. {exc}", param="file", code="invalid_file"
            ) from None
        except TooLarge as exc:
            writer.abort()
            raise PayloadTooLarge(str(exc), param="file") from None
        except BaseException:
            writer.abort()
            raise
        now = int(time.time())
        ttl = expires_after.seconds if expires_after else BATCH_FILE_TTL
        record = FileRecord(
            id=file_id,
            tenant=tenant,
            purpose="batch",
            filename=filename,
            bytes=size,
            created_at=now,
            expires_at=now + ttl,
            sha256=sha256,
            line_count=summary.line_count,
            endpoint=summary.endpoint,
            models=summary.models,
            blob=file_id,
        )
        writer.commit()
        try:
            await self.store.insert_file(record)
        except BaseException:
            self.blobs.delete(file_id)
            raise
        return record

    async def get_file(self, tenant: str, file_id: str) -> FileRecord:
        record = await self.store.get_file(file_id, tenant)
        if record is None:
            raise _no_such("File", file_id, "file_id")
        return record

    async def list_files(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]:
        try:
            return await self.store.list_files(
                tenant, purpose=purpose, after=after, limit=limit, order=order
            )
        except UnknownCursor:
            raise InvalidRequest("'after' does not name a file of yours.", param="after") from None

    async def delete_file(self, tenant: str, file_id: str) -> None:
        record = await self.get_file(tenant, file_id)
        await self.store.delete_file(record.id)
        if record.blob:
            self.blobs.delete(record.blob)

    async def open_content(self, tenant: str, file_id: str) -> FileRecord | ByteStream:
        """A local file record (served from its blob) or an upstream byte stream."""
        record = await self.get_file(tenant, file_id)
        if record.blob:
            return record
        provider = self.providers.get(record.provider or "")
        if provider is None or record.upstream_id is None:
            raise InvalidRequest(
                "The provider holding this file is not configured any more.",
                code="provider_unavailable",
            )
        return provider.open_file_content(record.upstream_id)

    # batches

    async def create_batch(self, tenant: str, body: CreateBatchBody) -> dict[str, Any]:
        file = await self.store.get_file(body.input_file_id, tenant)
        if file is None:
            raise _no_such("File", body.input_file_id, "input_file_id")
        if file.purpose != "batch" or file.blob is None:
            raise InvalidRequest("The input file must have purpose 'batch'.", param="input_file_id")
        if file.endpoint != body.endpoint:
            raise InvalidRequest(
                f"The input file's requests use {file.endpoint}, not {body.endpoint}.",
                param="endpoint",
                code="endpoint_mismatch",
            )
        decision = self.router.choose(body.endpoint, file.models, body.metadata)
        provider = self.providers[decision.provider]
        now = int(time.time())
        model = file.models[0] if len(file.models) == 1 else None
        batch_id = ids.new_batch_id()
        expiry = body.output_expires_after
        record = BatchRecord(
            id=batch_id,
            tenant=tenant,
            provider=provider.name,
            input_file_id=file.id,
            created_at=now,
            object=new_batch_object(batch_id, body, now, model, file.line_count or 0),
            output_ttl=expiry.seconds if expiry else None,
        )
        # Written before the upstream call, so a crash in between leaves a visible pending row.
        await self.store.insert_batch(record)
        try:
            upstream_file = await self._upstream_file(provider, file)
            upstream = await provider.create_batch(
                BatchRequest(
                    input_file_id=upstream_file,
                    endpoint=body.endpoint,
                    completion_window=body.completion_window,
                    metadata=body.metadata,
                    output_expires_after=expiry.model_dump() if expiry else None,
                )
            )
        except BaseException:
            await self.store.delete_batch(record.id)
            raise
        record.upstream_id = upstream.id
        record.pending = False
        await self._apply(record, upstream)
        log.info("batch %s created on provider %s (%s)", record.id, provider.name, decision.rule)
        return record.object

    async def retrieve_batch(self, tenant: str, batch_id: str) -> BatchView:
        record = await self._batch(tenant, batch_id)
        if record.pending or record.status in TERMINAL_STATUSES:
            return BatchView(record.object)
        return await self.refresh(record)

    async def list_batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        try:
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
        provider = self._provider(record)
        upstream = await provider.cancel_batch(record.upstream_id)
        # Some providers (anyapi.ai) answer cancel with a partial object: re-read the whole batch.
        try:
            upstream = await provider.get_batch(record.upstream_id)
        except ProviderError as exc:
            log.warning("batch %s: re-read after cancel failed (%s)", record.id, exc.kind)
        if upstream.status in _CANCEL_PENDING:
            upstream.status = "cancelling"
        await self._apply(record, upstream)
        return record.object

    async def refresh(self, record: BatchRecord) -> BatchView:
        """Ask the provider for the batch's state; one call in flight per batch."""
        running = self._refreshing.get(record.id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[BatchView] = asyncio.get_running_loop().create_future()
        self._refreshing[record.id] = future
        try:
            view = await self._refresh(record)
            future.set_result(view)
            return view
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._refreshing[record.id]

    async def _refresh(self, record: BatchRecord) -> BatchView:
        assert record.upstream_id is not None
        try:
            upstream = await self._provider(record).get_batch(record.upstream_id)
        except ProviderError as exc:
            log.warning(
                "batch %s: provider %s unavailable (%s)", record.id, record.provider, exc.kind
            )
            return BatchView(record.object, stale=True)
        await self._apply(record, upstream)
        return BatchView(record.object)

    async def reconcile_pending(self) -> int:
        """Pending rows at startup are creates the previous process never finished."""
        pending = await self.store.pending_batches()
        for record in pending:
            now = int(time.time())
            record.pending = False
            record.object.update(
                status="failed",
                failed_at=now,
                errors={
                    "object": "list",
                    "data": [
                        {
                            "code": "gateway_interrupted",
                            "message": "The gateway stopped while creating this batch; "
                            "create it again.",
                            "param": None,
                            "line": None,
                        }
                    ],
                },
            )
            await self.store.update_batch(record)
            log.warning("batch %s: create was interrupted by a restart; marked failed", record.id)
        return len(pending)

    # internals

    async def _batch(self, tenant: str, batch_id: str) -> BatchRecord:
        record = await self.store.get_batch(batch_id, tenant)
        if record is None:
            raise _no_such("Batch", batch_id, "batch_id")
        return record

    def _provider(self, record: BatchRecord) -> Provider:
        provider = self.providers.get(record.provider)
        if provider is None:
            raise ProviderError("retryable", f"provider {record.provider!r} is not enabled")
        return provider

    async def _upstream_file(self, provider: Provider, file: FileRecord) -> str:
        """Upload the input file to a provider once; later batches reuse it."""
        cached = await self.store.get_upstream_file(file.id, provider.name)
        if cached is not None:
            return cached
        assert file.blob is not None and file.endpoint is not None
        upstream_id = await provider.upload_file(
            InputFile(
                path=self.blobs.path(file.blob),
                filename=file.filename,
                bytes=file.bytes,
                line_count=file.line_count or 0,
                endpoint=file.endpoint,
                models=file.models,
            )
        )
        await self.store.put_upstream_file(file.id, provider.name, upstream_id)
        return upstream_id

    async def _apply(self, record: BatchRecord, upstream: UpstreamBatch) -> None:
        record.object = await self._normalize(record, upstream)
        await self.store.update_batch(record)

    async def _normalize(self, record: BatchRecord, upstream: UpstreamBatch) -> dict[str, Any]:
        obj = dict(record.object)
        obj["status"] = _next_status(record.status, upstream.status)
        for name in TIMESTAMP_FIELDS:
            value = upstream.timestamps.get(name)
            if value is not None:
                obj[name] = value
        if obj["status"] == "cancelling" and obj["cancelling_at"] is None:
            obj["cancelling_at"] = int(time.time())
        if upstream.model:
            obj["model"] = upstream.model
        if upstream.errors:
            obj["errors"] = {"object": "list", "data": upstream.errors}
        if upstream.request_counts is not None:
            rc = upstream.request_counts
            obj["request_counts"] = {
                "total": rc.total,
                "completed": rc.completed,
                "failed": rc.failed,
            }
        if upstream.usage is not None:
            obj["usage"] = upstream.usage
        for key, upstream_file in (
            ("output_file_id", upstream.output_file_id),
            ("error_file_id", upstream.error_file_id),
        ):
            if upstream_file and obj.get(key) is None:
                obj[key] = await self._output_file(record, upstream_file, key)
        return obj

    async def _output_file(self, record: BatchRecord, upstream_file: str, key: str) -> str:
        """The gateway file id for a provider's output/error file, made on first sight."""
        existing = await self.store.find_file_by_upstream(record.provider, upstream_file)
        if existing is not None:
            return existing.id
        info = await self._provider(record).get_file(upstream_file)
        now = int(time.time())
        ttl = record.output_ttl
        kind = "output" if key == "output_file_id" else "error"
        file = FileRecord(
            id=ids.new_file_id(),
            tenant=record.tenant,
            purpose="batch_output",
            filename=f"{record.id}_{kind}.jsonl",
            bytes=info.bytes,
            created_at=now,
            expires_at=now + ttl if ttl else None,
            provider=record.provider,
            upstream_id=upstream_file,
            batch_id=record.id,
        )
        await self.store.insert_file(file)
        return file.id


def _next_status(current: str, reported: str) -> str:
    """Never move backwards: terminal stays terminal, cancelling stays cancelling."""
    if current in TERMINAL_STATUSES:
        return current
    if current == "cancelling" and reported in _CANCEL_PENDING:
        return current
    return reported
