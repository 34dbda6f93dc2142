"""The gateway's own copies of provider output files.

Once a batch at a remote provider has ended, its output and error files are
copied into the blob store (`blobs.keep_provider_outputs`). Downloads are then
sent from the gateway's disk at close to loopback speed instead of being
relayed, and keep working while the provider is down or after it has dropped
the file. One replica copies at a time (the store's "keeper" lease); a copy
that fails is tried again later, with backoff.

A copy is the file rewritten into OpenAI batch lines carrying gateway ids only
(`gateway.result_lines`), and its row's `bytes` become the rewritten size. A file
the provider sized as non-empty (a placeholder size) that turns out empty is kept
as an empty file: its id is already in the batch object clients have seen.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from contextlib import suppress

from gateway.service import GatewayService
from gateway.store import FileRecord
from providers.base import Provider, ProviderError
from providers.retry import backoff_seconds

log = logging.getLogger("gateway.keeper")

LEASE = "keeper"
PAGE = 100
# The sweep also runs this often without a wake-up: for batches that ended in another
# process, or copies that failed and are due again.
SWEEP_SECONDS = 10.0
RETRY_BASE_SECONDS = 30.0
RETRY_CAP_SECONDS = 3600.0


class OutputKeeper:
    def __init__(
        self,
        service: GatewayService,
        owner: str,
        lease_seconds: float,
        *,
        retry_base_seconds: float = RETRY_BASE_SECONDS,
    ) -> None:
        self.service = service
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.retry_base_seconds = retry_base_seconds
        # File id -> (failed attempts, monotonic time of the next attempt).
        self._retry: dict[str, tuple[int, float]] = {}

    async def run(self) -> None:
        """Sweep whenever a batch ends in this process, and every SWEEP_SECONDS."""
        ended = self.service.batch_ended
        try:
            while True:
                # Not wait_for: on Python 3.11 it can swallow a cancel that lands as the
                # event is set, and the app's shutdown would wait for this loop forever.
                with suppress(TimeoutError):
                    async with asyncio.timeout(SWEEP_SECONDS):
                        await ended.wait()
                ended.clear()
                try:
                    await self.sweep()
                except Exception as exc:  # the store may be briefly unreachable
                    log.error("keeper: sweep failed: %s", type(exc).__name__)
        finally:
            with suppress(Exception):
                await self.service.store.release_lease(LEASE, self.owner)

    async def sweep(self) -> int:
        """Copy every output file still missing a copy; returns how many were kept."""
        svc = self.service
        remote = sorted(name for name, p in svc.providers.items() if p.remote_files)
        kept, after, seen = 0, "", set[str]()
        while page := await svc.store.files_to_keep(remote, after, time.time(), PAGE):
            for record in page:
                after = record.id
                seen.add(record.id)
                if not self._due(record.id):
                    continue
                # Renewed per file: a long sweep keeps the lease, a lost one stops it.
                if not await svc.store.acquire_lease(
                    LEASE, self.owner, self.lease_seconds, time.time()
                ):
                    return kept
                kept += await self.keep(record)
            if len(page) < PAGE:
                break
        # Files that left the list (kept elsewhere, expired) need no retry schedule.
        self._retry = {k: v for k, v in self._retry.items() if k in seen}
        return kept

    def _due(self, file_id: str) -> bool:
        retry = self._retry.get(file_id)
        return retry is None or time.monotonic() >= retry[1]

    async def keep(self, record: FileRecord) -> bool:
        """Copy one file; False if it failed (retried later) or another copy won."""
        svc = self.service
        provider = svc.providers.get(record.provider or "")
        if provider is None or record.upstream_id is None:
            return False
        # A key of its own: a replica that lost the lease mid-copy may copy it too.
        key = f"{record.id}.{secrets.token_hex(4)}"
        try:
            size = await self._copy(provider, record, key)
        except Exception as exc:  # the provider, the disk or the bucket: all retried later
            failures = self._retry.get(record.id, (0, 0.0))[0] + 1
            delay = backoff_seconds(
                failures - 1, self.retry_base_seconds, None, cap=RETRY_CAP_SECONDS
            )
            self._retry[record.id] = (failures, time.monotonic() + delay)
            reason = exc.kind if isinstance(exc, ProviderError) else type(exc).__name__
            log.warning("keeper: copy of %s failed (%s), next in %.1f s", record.id, reason, delay)
            return False
        self._retry.pop(record.id, None)
        if not await svc.store.set_file_blob(record.id, key, size):
            await svc.blobs.delete(key)  # expired, deleted, or copied elsewhere meanwhile
            return False
        svc.events.file_bytes("kept", size)
        svc.usage_due.set()
        return True

    async def _copy(self, provider: Provider, record: FileRecord, key: str) -> int:
        """The provider's file into blob `key`, all or nothing; returns its size.

        The copy is rewritten into OpenAI lines with gateway ids on the way
        (`gateway.result_lines`), once, so downloads send the blob as it is.
        """
        writer = self.service.blobs.writer(key)
        size = 0
        try:
            async with await self.service.normalized_content(provider, record) as chunks:
                async for chunk in chunks:
                    await writer.write(chunk)
                    size += len(chunk)
        except BaseException:
            await writer.abort()
            raise
        await writer.commit()
        return size
