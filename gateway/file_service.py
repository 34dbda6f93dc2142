"""The file use cases: upload, retrieve, list, delete, content, expiry. No HTTP in here.

A mixin of `GatewayService` (which owns the store, blobs, providers and keys);
files are tenant-scoped everywhere, and an expired, malformed or foreign id
answers exactly like an unknown one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Mapping

from gateway import ids
from gateway.blobs import Blobs
from gateway.config import KeyConfig, LimitsConfig
from gateway.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, QuotaExceeded
from gateway.events import ServiceEvents
from gateway.jsonl import JSONLError, JSONLValidator, TooLarge
from gateway.store import FileRecord, Page, Store
from gateway.store.base import UnknownCursor
from gateway.sweeper import sweep_expired
from gateway.wire import ExpiresAfter
from providers.base import ByteStream, Provider

BATCH_FILE_TTL = 30 * 86_400  # OpenAI's default expiry for purpose=batch uploads


def no_such(kind: str, object_id: str, param: str | None = None) -> NotFound:
    shown = object_id if ids.looks_valid(object_id) else "that id"
    return NotFound(f"No such {kind}: {shown}", param=param, code=None)


class FileUseCases:
    store: Store
    blobs: Blobs
    limits: LimitsConfig
    providers: Mapping[str, Provider]
    events: ServiceEvents
    _keys: dict[str, KeyConfig]

    async def upload(
        self,
        tenant: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        expires_after: ExpiresAfter | None = None,
    ) -> FileRecord:
        """Stream an input file to a blob while validating it; all or nothing."""
        budget = await self._storage_budget(tenant)
        file_id = ids.new_file_id()
        validator = JSONLValidator(
            max_bytes=self.limits.max_file_bytes,
            max_lines=self.limits.max_file_lines,
            max_line_bytes=self.limits.max_line_bytes,
        )
        digest = hashlib.sha256()
        size = 0
        writer = self.blobs.writer(file_id)
        try:
            async for chunk in chunks:
                validator.feed(chunk)
                digest.update(chunk)
                await writer.write(chunk)
                size += len(chunk)
                if budget is not None and size > budget:
                    raise _storage_quota()
            summary = validator.finish()
        except JSONLError as exc:
            await writer.abort()
            raise InvalidRequest(
                f"Invalid batch input file. {exc}", param="file", code="invalid_file"
            ) from None
        except TooLarge as exc:
            await writer.abort()
            raise PayloadTooLarge(str(exc), param="file") from None
        except BaseException:
            await writer.abort()
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
            sha256=digest.hexdigest(),
            line_count=summary.line_count,
            endpoint=summary.endpoint,
            models=summary.models,
            blob=file_id,
        )
        await writer.commit()
        try:
            await self.store.insert_file(record)
        except BaseException:
            await self.blobs.delete(file_id)
            raise
        self.events.file_bytes("upload", size)
        return record

    async def get_file(self, tenant: str, file_id: str, param: str = "file_id") -> FileRecord:
        """The tenant's live file; another tenant's, expired and malformed ids look unknown."""
        record = await self.store.get_file(file_id, tenant) if ids.looks_valid(file_id) else None
        if record is None or (record.expires_at is not None and record.expires_at <= time.time()):
            raise no_such("File", file_id, param)
        return record

    async def list_files(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]:
        try:
            if after is not None and not ids.looks_valid(after):
                raise UnknownCursor(after)
            return await self.store.list_files(
                tenant, purpose=purpose, after=after, limit=limit, order=order
            )
        except UnknownCursor:
            raise InvalidRequest("'after' does not name a file of yours.", param="after") from None

    async def delete_file(self, tenant: str, file_id: str) -> None:
        record = await self.get_file(tenant, file_id)
        if record.purpose == "batch_output":
            raise InvalidRequest(
                "Batch output files are read-only; they expire with the batch's "
                "output_expires_after.",
                param="file_id",
                code="file_read_only",
            )
        if await self.store.file_in_use(record.id):
            raise Conflict(
                "The file is the input of a batch that is still running; cancel the batch or "
                "wait for it to end before deleting the file.",
                param="file_id",
                code="file_in_use",
            )
        await self._remove_file(record)

    async def discard_upload(self, record: FileRecord) -> None:
        """Undo an upload whose request failed after the file part was stored."""
        await self._remove_file(record)

    async def _remove_file(self, record: FileRecord) -> None:
        await self.store.delete_file(record.id)
        if record.blob:
            await self.blobs.delete(record.blob)

    async def open_content(self, tenant: str, file_id: str) -> FileRecord | ByteStream:
        """A record whose bytes are a blob of ours, or the provider's byte stream."""
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

    async def sweep_expired(self, now: float | None = None) -> int:
        """Remove expired files (rows, and blobs the gateway holds); returns how many."""
        return await sweep_expired(self.store, self.blobs, time.time() if now is None else now)

    async def _storage_budget(self, tenant: str) -> int | None:
        """Bytes the tenant may still upload (None: no limit)."""
        key = self._keys.get(tenant)
        limit = key.limits.max_bytes_stored if key else None
        if limit is None:
            return None
        left = limit - await self.store.bytes_stored(tenant)
        if left <= 0:
            raise _storage_quota()
        return left


def _storage_quota() -> QuotaExceeded:
    return QuotaExceeded(
        "This key's stored files would exceed its max_bytes_stored; delete files first.",
        param="file",
        code="storage_limit_exceeded",
    )
