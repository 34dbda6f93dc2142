"""The orphan sweep: what slipped past exactly-once creates is found by tag and repaired.

A provider may carry a create out after the gateway's lookup concluded it never
would (a late execution), and an upload retried after a lost answer leaves a
second copy. The sweep lists each provider's batches and uploads since the
oldest unsettled create (at least `repair_window_seconds` back) and:

- attaches a tagged batch to its row when the row still waits for one and no live
  instance is creating it;
- cancels a tagged batch that its row does not point at (a duplicate), or whose
  row was failed (no client is waiting for it);
- deletes an upload named after a gateway file when the gateway uses another copy
  of that file at the provider.

Batches tagged with ids this store does not know are left alone: they may belong
to another deployment sharing the provider account. Two provider entries may share one
account too: a batch or upload some entry's row uses is never taken for an extra copy.
Each action is logged and counted in `gateway_upstream_repairs_total{provider,kind,action}`.
"""

from __future__ import annotations

import logging
import time

from gateway import ids
from gateway.service import GatewayService
from providers.base import Provider, ProviderError, UpstreamBatch

log = logging.getLogger("gateway.repair")


class Repairer:
    def __init__(self, service: GatewayService, window_seconds: float) -> None:
        self.service = service
        self.window_seconds = window_seconds

    async def since(self) -> int:
        """How far back to look: the window, or the oldest unsettled create if older."""
        oldest = time.time() - self.window_seconds
        for record in await self.service.store.pending_batches():
            oldest = min(oldest, record.created_at)
            break  # oldest first
        return int(oldest)

    async def sweep(self) -> int:
        """One pass over every provider; returns how many repairs were made."""
        since = await self.since()
        done = 0
        for provider in list(self.service.providers.values()):
            try:
                done += await self.sweep_batches(provider, since)
                done += await self.sweep_files(provider, since)
            except ProviderError as exc:
                log.warning("repair sweep of %s postponed (%s)", provider.name, exc.kind)
        return done

    async def sweep_batches(self, provider: Provider, since: int) -> int:
        svc = self.service
        live = {instance.id for instance in await svc.store.instances()}
        done = 0
        for tag, upstream in await provider.tagged_batches(since):
            record = await svc.store.get_batch(tag) if ids.looks_valid(tag) else None
            if record is None:
                continue
            if record.upstream_id == upstream.id:
                # Its own batch, whichever provider entry lists it: two entries may share
                # one account (a sharded batch's children at both, say).
                continue
            if record.pending and record.upstream_id is None:
                if record.owner in live or record.provider != provider.name:
                    continue  # its create is running: that process attaches it
                await svc._attach(record, upstream)
                self._count(provider.name, "orphan_batch", "attached", record.id)
                done += 1
            elif not upstream.terminal:
                kind = "duplicate_batch" if record.upstream_id else "orphan_batch"
                if await self._cancel(provider, upstream, record.id):
                    self._count(provider.name, kind, "cancelled", record.id)
                    done += 1
        return done

    async def sweep_files(self, provider: Provider, since: int) -> int:
        done = 0
        for file_id, upstream_id in await provider.tagged_files(since):
            if not ids.looks_valid(file_id):
                continue
            used = await self.service.store.get_upstream_file(file_id, provider.name)
            # A copy with no record may be an upload whose answer is still on its way.
            if used is None or used == upstream_id:
                continue
            if await self._used_elsewhere(file_id, upstream_id):
                continue  # another provider entry on the same account uses this copy
            try:
                await provider.delete_file(upstream_id)
            except ProviderError as exc:
                if exc.kind != "not_found":  # gone already: nothing left to do
                    log.warning(
                        "repair on %s postponed for %s (%s)", provider.name, file_id, exc.kind
                    )
                continue
            self._count(provider.name, "duplicate_upload", "deleted", file_id)
            done += 1
        return done

    async def _used_elsewhere(self, file_id: str, upstream_id: str) -> bool:
        store = self.service.store
        for name in self.service.providers:
            if await store.get_upstream_file(file_id, name) == upstream_id:
                return True
        return False

    async def _cancel(self, provider: Provider, upstream: UpstreamBatch, batch_id: str) -> bool:
        """Cancel one extra batch; a failure waits for the next sweep, not the others."""
        try:
            await provider.cancel_batch(upstream.id)
        except ProviderError as exc:
            if exc.kind != "bad_request":  # bad_request: it ended meanwhile, nothing to stop
                log.warning("repair on %s postponed for %s (%s)", provider.name, batch_id, exc.kind)
            return False
        return True

    def _count(self, provider: str, kind: str, action: str, gateway_id: str) -> None:
        self.service.events.repaired(provider, kind, action)
        log.warning("repair on %s: %s %s (for %s)", provider, kind, action, gateway_id)
