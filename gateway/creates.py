"""Creates at providers, exactly once: one gateway batch is at most one upstream batch.

The row is written (pending, owned by this instance) before any upstream call. An
answer that is not a definite rejection may mean the provider made the batch, so
every such answer is followed by a lookup of the gateway's tag over every batch the
provider made since the create began; only a lookup that found nothing lets the
create be tried again or moved to another provider. When the outcome stays unknown
(the lookup failed, or the last attempt was ambiguous), the create is handed to the
gateway: the client gets the batch as `validating`, and `settle_pending` finishes
it in the background under the same id, so a client's own retry can't make a
second one. Creates whose process died are settled by whoever sees it gone.

What still slips through (a provider that carries a create out after its lookup
found nothing) is found by tag and cancelled by the repair sweep (`repair.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

from gateway.batch_sync import BatchSync
from gateway.blobs import Blobs
from gateway.store import BatchRecord, FileRecord
from gateway.store.base import BatchEvent
from providers.base import (
    BatchRequest,
    InputFile,
    Provider,
    ProviderError,
    UpstreamBatch,
)
from providers.retry import backoff_seconds

log = logging.getLogger("gateway.service")

# Background rounds for a handed-over create before it is marked failed.
MAX_SETTLE_ATTEMPTS = 8

INTERRUPTED = {
    "code": "gateway_interrupted",
    "message": "The gateway stopped while creating this batch, and the provider has no "
    "record of it; create it again.",
    "param": None,
    "line": None,
}


class KeyedLocks:
    """A lock per key, dropped once nobody holds or waits for it (so memory stays bounded)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Unsettled(Exception):
    """The create may or may not have been made upstream; the gateway settles it later."""


def batch_error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": None}


def request_for(record: BatchRecord, upstream_file_id: str = "") -> BatchRequest:
    """The upstream request of a stored batch (for a create made again in the background)."""
    obj = record.object
    ttl = record.output_ttl
    return BatchRequest(
        input_file_id=upstream_file_id,
        endpoint=obj["endpoint"],
        completion_window=obj["completion_window"],
        metadata=obj.get("metadata"),
        output_expires_after={"anchor": "created_at", "seconds": ttl} if ttl else None,
        gateway_batch_id=record.id,
    )


def _definite(exc: ProviderError) -> ProviderError:
    """A failure before any create was sent: whatever it was, no batch came of it."""
    exc.ambiguous = False
    return exc


class CreateUseCases(BatchSync):
    blobs: Blobs
    # When a handed-over create may be tried again (monotonic seconds), by batch id.
    _settle_after: dict[str, float]
    # One upload of a file to a provider at a time in this process; the store settles
    # a race between processes.
    _uploading: KeyedLocks
    _settling: asyncio.Lock

    async def _create_upstream(
        self,
        record: BatchRecord,
        file: FileRecord,
        request: BatchRequest,
        candidates: tuple[str, ...],
        *,
        keep: bool = False,
    ) -> UpstreamBatch:
        """Each candidate in turn; raises ProviderError only when no attempt may have made
        a batch, and Unsettled when one may have. A row no batch came of is deleted (the
        client gets the error), or with `keep` marked failed (a sharded batch's child)."""
        last: ProviderError | None = None
        maybe_made = False
        for i, name in enumerate(candidates):
            provider = self.providers[name]
            record.provider = name
            # An ambiguous failure moves on to the next provider once its lookup found
            # nothing; the last provider gets its policy's retries (definite failures
            # were retried already, by the resilience layer).
            attempts = _attempts(provider) if i + 1 == len(candidates) else 1
            for attempt in range(attempts):
                try:
                    upstream = await self._create_at(provider, file, request)
                except ProviderError as exc:
                    if provider.lookup == "none":
                        exc.ambiguous = False  # nothing to look up: taken as not made
                    last = exc
                    if not exc.ambiguous:
                        await self._attempted(record, name, "failed", exc)
                        break  # definitely not made
                    maybe_made = True
                    try:
                        found = await self._find(provider, record, file)
                    except Unsettled:
                        await self._attempted(record, name, "unknown", exc)
                        raise
                    if found is not None:
                        await self._attempted(record, name, "found")
                        return found
                    # The last try's outcome stays unknown: the gateway settles it later.
                    final = i + 1 == len(candidates) and attempt + 1 == attempts
                    await self._attempted(record, name, "unknown" if final else "failed", exc)
                    if attempt + 1 < attempts:
                        await asyncio.sleep(_pause(provider, attempt, exc.retry_after))
                else:
                    await self._attempted(record, name, "created")
                    return upstream
            assert last is not None
            if last.kind == "bad_request" and not last.ambiguous:
                break  # about the input itself: another provider would say the same
            if i + 1 < len(candidates):
                self.events.fallback(name, candidates[i + 1], last.kind)
                log.warning(
                    "batch %s: create on %s failed (%s); trying %s",
                    record.id,
                    name,
                    last.kind,
                    candidates[i + 1],
                )
        assert last is not None
        if last.ambiguous:
            raise Unsettled(last.message)
        if maybe_made or keep:
            # An earlier attempt's lookup found nothing, but the provider may still carry
            # it out: the row stays (failed), so the repair sweep cancels a late batch.
            code = "upstream_unavailable" if maybe_made else last.code or "upstream_error"
            await self._fail(record, batch_error(code, last.message))
        else:
            await self.store.delete_batch(record.id)
        raise last

    async def _attempted(
        self, record: BatchRecord, provider: str, outcome: str, exc: ProviderError | None = None
    ) -> None:
        """Record a create attempt for operators (the admin API's `attempts`)."""
        error = f"{exc.code or exc.kind}: {exc.message}" if exc is not None else None
        await self.store.add_batch_event(
            BatchEvent(record.id, int(time.time()), "attempt", None, provider, outcome, error)
        )

    async def _find(
        self, provider: Provider, record: BatchRecord, file: FileRecord | None
    ) -> UpstreamBatch | None:
        """The upstream batch this row's create made, None if it certainly made none;
        Unsettled when that can't be told now (the lookup failed, or was not conclusive)."""
        try:
            if provider.lookup == "tag":
                return await provider.find_batch(record.id, record.created_at)
            if provider.lookup == "count" and file is not None:
                return await self._find_by_count(provider, record, file)
            return None
        except ProviderError as exc:
            log.warning("batch %s: lookup on %s failed (%s)", record.id, provider.name, exc.kind)
            raise Unsettled(exc.message) from None

    async def _find_by_count(
        self, provider: Provider, record: BatchRecord, file: FileRecord
    ) -> UpstreamBatch | None:
        """A provider whose batches carry no tag: the batches made since this create began
        with its request count that no gateway batch points at are the candidates.

        Other unsettled creates of that size there are rivals. A rival still running in a
        live instance, or one of another input file, may own a candidate: then nothing is
        decided now. Rivals of the same input file whose outcome is unknown too are
        interchangeable (same requests, same tenant's file): the candidates go to them in
        order, clients holding an id first. More candidates than creates can't be told.
        """
        upstream_file = await self.store.get_upstream_file(file.id, provider.name)
        if upstream_file is None:
            return None  # never uploaded there, so never created there
        request = request_for(record, upstream_file)
        listed = await provider.candidates(request, record.created_at)
        free = [
            batch
            for batch in reversed(listed)  # oldest first
            if await self.store.batch_of_upstream(provider.name, batch.id) is None
        ]
        if not free:
            return None
        total = record.object["request_counts"]["total"]
        live = {instance.id for instance in await self.store.instances()}
        peers = [record]
        for other in await self.store.pending_batches():
            if other.id == record.id or other.provider != provider.name:
                continue
            if other.object["request_counts"]["total"] != total:
                continue
            if other.owner in live or other.input_file_id != record.input_file_id:
                raise Unsettled("another create could have made this batch")
            peers.append(other)
        if len(free) > len(peers):
            raise Unsettled("more batches than creates that could have made them")
        peers.sort(key=lambda r: (r.owner is not None, r.created_at, r.id))
        mine = peers.index(record)
        return await provider.adopt(free[mine].id, request) if mine < len(free) else None

    async def _create_at(
        self, provider: Provider, file: FileRecord, request: BatchRequest
    ) -> UpstreamBatch:
        upstream_file = await self._upstream_file(provider, file)
        try:
            return await provider.create_batch(replace(request, input_file_id=upstream_file))
        except ProviderError as exc:
            if exc.kind != "not_found" or exc.ambiguous:
                raise
        # The provider no longer has our cached upload (expired or deleted): upload again.
        await self.store.delete_upstream_file(file.id, provider.name)
        upstream_file = await self._upstream_file(provider, file)
        return await provider.create_batch(replace(request, input_file_id=upstream_file))

    async def _upstream_file(self, provider: Provider, file: FileRecord) -> str:
        """Upload the input file to a provider once; later batches reuse it.

        The provider's copy is named after the gateway file id, so an upload retried
        after a lost answer leaves a duplicate the repair sweep can find and delete.
        """
        async with self._uploading.hold((file.id, provider.name)):
            cached = await self.store.get_upstream_file(file.id, provider.name)
            if cached is not None:
                return cached
            assert file.blob is not None and file.endpoint is not None
            try:
                upstream_id = await provider.upload_file(
                    InputFile(
                        path=self.blobs.local_path(file.blob),
                        opener=partial(self.blobs.open, file.blob),
                        filename=f"{file.id}.jsonl",
                        bytes=file.bytes,
                        line_count=file.line_count or 0,
                        endpoint=file.endpoint,
                        models=file.models,
                    )
                )
            except ProviderError as exc:
                raise _definite(exc) from None
            return await self.store.put_upstream_file(file.id, provider.name, upstream_id)

    async def hand_over(self, record: BatchRecord) -> None:
        """Leave a create of unknown outcome to `settle_pending` (the client has the id)."""
        record.owner = None
        await self.store.update_batch(record)
        log.warning("batch %s: create outcome unknown; the gateway settles it", record.id)

    async def orphan(self, record: BatchRecord) -> None:
        """A create that broke off unexpectedly: settled like one whose process died."""
        record.owner = ""  # names no instance
        await self.store.update_batch(record)

    async def _attach(self, record: BatchRecord, upstream: UpstreamBatch) -> None:
        record.upstream_id = upstream.id
        record.pending = False
        await self._apply(record, upstream)

    async def _fail(self, record: BatchRecord, error: dict[str, Any]) -> None:
        record.pending = False
        record.object.update(
            status="failed",
            failed_at=int(time.time()),
            errors={"object": "list", "data": [error]},
        )
        if await self.store.update_batch(record, event=self._event(record)):
            self.events.terminal(record)

    async def settle_pending(self) -> int:
        """Settle the pending creates no live instance runs; returns how many were settled.

        Each is attached to the upstream batch tagged with its id; else a create handed
        over is made again under the same id, and one whose process died is marked
        failed (its client may never have learned the id). None is left an orphan.
        """
        async with self._settling:  # one pass at a time: a create is never made twice
            return await self._settle_due()

    async def _settle_due(self) -> int:
        now = time.monotonic()
        due: dict[str, list[BatchRecord]] = {}
        for record in await self.store.unowned_pending_batches():
            if now >= self._settle_after.get(record.id, 0.0):
                due.setdefault(record.provider, []).append(record)
        settled = 0
        for name, records in due.items():
            provider = self.providers.get(name)
            if provider is None:
                continue
            # One listing per provider serves every tagged row (oldest first, so it reaches
            # back to the oldest create); a lookup that fails leaves them for the next round.
            try:
                tagged = (
                    dict(await provider.tagged_batches(records[0].created_at))
                    if provider.lookup == "tag"
                    else {}
                )
            except ProviderError as exc:
                log.warning("settling creates on %s postponed (%s)", name, exc.kind)
                continue
            for record in records:
                if provider.lookup == "count":
                    try:
                        file = await self.store.get_file(record.input_file_id)
                        found = await self._find(provider, record, file)
                    except Unsettled:
                        continue
                else:
                    found = tagged.get(record.id)
                settled += await self._settle(provider, record, found)
        return settled

    async def _settle(
        self, provider: Provider, record: BatchRecord, found: UpstreamBatch | None
    ) -> bool:
        if found is not None:
            await self._attempted(record, provider.name, "found")
            await self._attach(record, found)
            log.warning("batch %s: create attached to its upstream batch", record.id)
        elif record.owner is not None and record.parent_id is None:
            # A sharded batch's child is created again instead: its parent's client
            # holds the parent's id, not the child's.
            await self._fail(record, INTERRUPTED)
            log.warning("batch %s: create interrupted by a stopped process", record.id)
        elif not await self._create_again(provider, record):
            return False
        self._settle_after.pop(record.id, None)
        return True

    async def _create_again(self, provider: Provider, record: BatchRecord) -> bool:
        """One background attempt at a handed-over create; True once it is settled."""
        file = await self.store.get_file(record.input_file_id)
        if file is None or file.blob is None:
            await self._fail(record, batch_error("input_file_gone", "The input file is gone."))
            return True
        record.settle_attempts += 1
        try:
            upstream = await self._create_at(provider, file, request_for(record))
        except ProviderError as exc:
            await self._attempted(
                record, provider.name, "unknown" if exc.ambiguous else "failed", exc
            )
            if exc.ambiguous or (exc.retryable and record.settle_attempts < MAX_SETTLE_ATTEMPTS):
                # Ambiguous: the next round's lookup sees it. Else: try again later.
                delay = backoff_seconds(record.settle_attempts, 2.0, exc.retry_after, cap=300.0)
                self._settle_after[record.id] = time.monotonic() + delay
                await self.store.update_batch(record)
                return False
            await self._fail(record, batch_error(exc.code or "upstream_error", exc.message))
            return True
        await self._attempted(record, provider.name, "created")
        await self._attach(record, upstream)
        self.events.created(record.provider, record.object["endpoint"])
        log.info("batch %s: created on %s in the background", record.id, record.provider)
        return True


def _attempts(provider: Provider) -> int:
    """Attempts per provider under its retry policy (bare adapters in tests get one)."""
    policy = getattr(provider, "policy", None)
    return 1 + (policy.max_retries if policy is not None else 0)


def _pause(provider: Provider, attempt: int, retry_after: float | None) -> float:
    policy = getattr(provider, "policy", None)
    base, cap = (policy.backoff, policy.max_backoff) if policy is not None else (0.5, 8.0)
    return backoff_seconds(attempt, base, retry_after, cap=cap)
