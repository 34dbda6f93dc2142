"""The file use cases: upload, retrieve, list, delete, content, expiry. No HTTP in here.

A mixin of `GatewayService` (which owns the store, blobs, providers and keys);
files are tenant-scoped everywhere, and an expired, malformed or foreign id
answers exactly like an unknown one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from gateway import ids
from gateway.blobs import Blobs
from gateway.config import Config, KeyConfig, LimitsConfig
from gateway.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, QuotaExceeded
from gateway.events import ServiceEvents
from gateway.jsonl import JSONLError, JSONLValidator, TooLarge
from gateway.result_lines import normalize
from gateway.store import BatchRecord, FileRecord, Page, Store
from gateway.store.base import UnknownCursor
from gateway.sweeper import sweep_expired
from gateway.wire import ExpiresAfter
from providers.base import TERMINAL_STATUSES, ByteStream, Provider
from providers.context import BlobWriter

log = logging.getLogger("gateway.files")

BATCH_FILE_TTL = 30 * 86_400
# Says that a download is what a sharded batch still running has of its output so far.
PARTIAL_HEADER = "X-Gateway-Partial"  # OpenAI's default expiry for purpose=batch uploads


@dataclass(frozen=True, slots=True)
class PartialContent:
    """The part a sharded batch still running has of its merged output (an extension:
    answered with `X-Gateway-Partial: true`)."""

    stream: ByteStream


def no_such(kind: str, object_id: str, param: str | None = None) -> NotFound:
    shown = object_id if ids.looks_valid(object_id) else "that id"
    return NotFound(f"No such {kind}: {shown}", param=param, code=None)


class FileUseCases:
    store: Store
    blobs: Blobs
    config: Config
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
        max_bytes, max_lines, max_inputs = self.config.upload_limits()
        validator = JSONLValidator(
            max_bytes=max_bytes,
            max_lines=max_lines,
            max_embedding_inputs=max_inputs,
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

    async def open_content(
        self, tenant: str, file_id: str
    ) -> FileRecord | ByteStream | PartialContent:
        """A record whose bytes are a blob of ours, or the provider's bytes as a stream
        (a remote provider's result file rewritten into OpenAI lines as it passes), or
        what a sharded batch still running has of its merged output."""
        record = await self.get_file(tenant, file_id)
        return await self._content(record)

    async def open_bytes(self, record: FileRecord) -> ByteStream:
        """A file's bytes as `open_content` gives them, for the gateway's own reading."""
        opened = await self._content(record)
        if isinstance(opened, FileRecord):
            assert opened.blob is not None
            return self.blobs.open(opened.blob)
        return opened.stream if isinstance(opened, PartialContent) else opened

    async def _content(self, record: FileRecord) -> FileRecord | ByteStream | PartialContent:
        if record.blob:
            return record
        if record.provider is None and record.batch_id is not None:
            return PartialContent(await self.partial_output(record))
        provider = self.providers.get(record.provider or "")
        if provider is None or record.upstream_id is None:
            raise InvalidRequest(
                "The provider holding this file is not configured any more.",
                code="provider_unavailable",
            )
        if not (provider.remote_files and record.purpose == "batch_output"):
            # A local provider's files are written by the gateway, already OpenAI lines.
            return provider.open_file_content(record.upstream_id)
        batch = await self._batch_of(record)
        stream = self._normalized(provider, record, batch)
        ended = batch is not None and batch.status in TERMINAL_STATUSES
        if ended and self.config.blobs.keep_provider_outputs:
            # Not kept yet (the keeper is on its way): this download keeps it, so the
            # file's `bytes` match what the client got once the download ends.
            return _kept_while_relayed(self, stream, record)
        return stream

    async def partial_output(self, record: FileRecord) -> ByteStream:
        raise NotImplementedError  # `gateway.sharding` fills it

    async def normalized_content(self, provider: Provider, record: FileRecord) -> ByteStream:
        """A remote provider's output/error file as OpenAI lines with gateway ids only.

        Used for relayed downloads and by the keeper, so both give the same bytes; ids
        the provider mentions in error messages (its batch and file ids) become ours.
        """
        return self._normalized(provider, record, await self._batch_of(record))

    async def _batch_of(self, record: FileRecord) -> BatchRecord | None:
        return await self.store.get_batch(record.batch_id) if record.batch_id else None

    def _normalized(
        self, provider: Provider, record: FileRecord, batch: BatchRecord | None
    ) -> ByteStream:
        assert record.upstream_id is not None
        swap = {record.upstream_id: record.id}
        if batch is not None and batch.upstream_id:
            swap[batch.upstream_id] = batch.id
        return _rewritten(
            provider.open_file_content(record.upstream_id),
            record.batch_id or record.id,
            record.id,
            swap,
        )

    async def sweep_expired(self, now: float | None = None) -> int:
        """Remove expired files (rows, and blobs the gateway holds); returns how many."""
        moment = time.time() if now is None else now
        return await sweep_expired(
            self.store, self.blobs, moment, accounted=self.config.usage.enabled
        )

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


@asynccontextmanager
async def _rewritten(
    stream: ByteStream, batch_id: str, file_id: str, swap: dict[str, str]
) -> AsyncIterator[AsyncIterator[bytes]]:
    """`stream` with its chunks rewritten; entering it still performs the request."""
    async with stream as chunks:
        lines = normalize(chunks, batch_id, file_id, swap)
        try:
            yield lines
        finally:
            await lines.aclose()


@asynccontextmanager
async def _kept_while_relayed(
    files: FileUseCases, stream: ByteStream, record: FileRecord
) -> AsyncIterator[AsyncIterator[bytes]]:
    """`stream`, written to a blob as it passes and kept as the file's copy if it ends."""
    async with stream as chunks:
        tee = _tee(files, chunks, record)
        try:
            yield tee
        finally:
            await tee.aclose()


async def _tee(
    files: FileUseCases, chunks: AsyncIterator[bytes], record: FileRecord
) -> AsyncGenerator[bytes, None]:
    """The chunks as they come; the copy never fails the download. A key of its own, as
    the keeper's: whichever copy lands first is kept, the other is deleted."""
    key = f"{record.id}.{secrets.token_hex(4)}"
    writer: BlobWriter | None = None
    try:
        writer = files.blobs.writer(key)
    except Exception as exc:  # no staging space: relay only, the keeper copies later
        _copy_failed(record, exc)
    size = 0
    try:
        async for chunk in chunks:
            if writer is not None:
                try:
                    await writer.write(chunk)
                except Exception as exc:
                    _copy_failed(record, exc)
                    await _abort(writer)
                    writer = None
            size += len(chunk)
            yield chunk
    except BaseException:  # the client left or the provider broke off: no copy
        if writer is not None:
            await _abort(writer)
        raise
    if writer is not None:
        try:
            await writer.commit()
            if await files.store.set_file_blob(record.id, key, size):
                files.events.file_bytes("kept", size)
                return
        except Exception as exc:
            _copy_failed(record, exc)
            await _abort(writer)
        # Kept by the keeper (or another download) meanwhile, deleted, or failed.
        with suppress(Exception):
            await files.blobs.delete(key)


def _copy_failed(record: FileRecord, exc: Exception) -> None:
    log.warning("copy of %s while relaying failed (%s)", record.id, type(exc).__name__)


async def _abort(writer: BlobWriter) -> None:
    with suppress(Exception):
        await writer.abort()


def _storage_quota() -> QuotaExceeded:
    return QuotaExceeded(
        "This key's stored files would exceed its max_bytes_stored; delete files first.",
        param="file",
        code="storage_limit_exceeded",
    )
