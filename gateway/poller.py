"""Background refresh of active batches, so progress shows without clients polling.

One loop per provider: a slow provider only delays its own batches. A loop
leases the provider's due batches in the store (`claim_active_batches`), so
several replicas share the work and never poll one batch at once; each batch is
handed back due again one interval (with jitter) later. A replica that dies
leaves leases that expire, and another replica takes the batches over.

Housekeeping (settling creates, the orphan sweep, webhooks, expired files) runs on
the one replica holding the store's "housekeeping" lease, so each job runs once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from contextlib import suppress

from gateway import idempotency, metrics
from gateway.config import SHARDED, PollerConfig
from gateway.repair import Repairer
from gateway.retention import Retention
from gateway.service import GatewayService
from gateway.store.base import BatchRecord
from gateway.webhooks import WebhookSender
from providers.base import TERMINAL_STATUSES

log = logging.getLogger("gateway.poller")

# The timestamp at which a batch entered each active status.
PHASE_STARTED = {
    "validating": "created_at",
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "cancelling": "cancelling_at",
}


class Poller:
    def __init__(
        self,
        service: GatewayService,
        config: PollerConfig,
        webhooks: WebhookSender,
        *,
        owner: str | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.webhooks = webhooks
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._next_sweep = 0.0
        self._next_repair = time.monotonic() + config.repair_interval_seconds
        self.repairer = Repairer(service, config.repair_window_seconds)
        self.retention = Retention(service)

    @property
    def _claim_size(self) -> int:
        return max(100, self.config.concurrency_per_provider * 8)

    async def _poll(self, record: BatchRecord, limit: asyncio.Semaphore) -> None:
        try:
            async with limit:
                if record.provider == SHARDED:
                    await self.service.advance_shard(record)
                elif record.status not in TERMINAL_STATUSES:
                    await self.service.refresh(record)
        except Exception as exc:  # one batch must not stop the sweep
            log.error("poller: refresh of %s failed: %s", record.id, type(exc).__name__)
        finally:
            next_poll = time.time() + self._pause()
            await self.service.store.release_batch(record.id, self.owner, next_poll)

    async def sweep_provider(self, name: str) -> int:
        """Refresh every due batch of one provider; returns how many were refreshed."""
        limit = asyncio.Semaphore(self.config.concurrency_per_provider)
        total = 0
        while self._polled(name):
            claimed = await self.service.store.claim_active_batches(
                self.owner, self._claim_size, self.config.lease_seconds, time.time(), name
            )
            await asyncio.gather(*(self._poll(record, limit) for record in claimed))
            total += len(claimed)
            if len(claimed) < self._claim_size:
                break
        return total

    def _polled(self, name: str) -> bool:
        """Providers' batches, and sharded batches (advanced, not asked about)."""
        return name == SHARDED or name in self.service.providers

    async def sweep_once(self) -> int:
        """One sweep of every provider at once (tests and benchmarks call this)."""
        names = [*self.service.providers, SHARDED]
        counts = await asyncio.gather(*(self.sweep_provider(n) for n in names))
        return sum(counts)

    def _pause(self) -> float:
        jitter = self.config.jitter
        return self.config.interval_seconds * random.uniform(1 - jitter, 1 + jitter)

    async def _provider_loop(self, name: str) -> None:
        # Batches fall due at their own times; look for due ones a few times an interval.
        tick = min(1.0, self.config.interval_seconds / 4)
        while self._polled(name):
            try:
                await self.sweep_provider(name)
            except Exception as exc:  # one bad sweep must not stop the loop
                log.error("poller: sweep of %s failed: %s", name, type(exc).__name__)
            await asyncio.sleep(tick * random.uniform(0.5, 1.0))

    async def refresh_gauges(self) -> None:
        """Batches by provider and status, and the oldest per active status, from the store."""
        store = self.service.store
        now = time.time()
        oldest: dict[tuple[str, str], float] = {}
        for record in await store.active_batches():
            started = record.object.get(PHASE_STARTED.get(record.status, "")) or record.created_at
            key = (record.provider, record.status)
            oldest[key] = max(oldest.get(key, 0.0), now - started)
        metrics.set_batch_gauges(
            await store.count_batches(), [(p, s, age) for (p, s), age in oldest.items()]
        )

    async def run(self) -> None:
        """Supervise provider loops (providers may change on reload) and housekeeping."""
        gauges_due = 0.0
        while True:
            for name in [*self.service.providers, SHARDED]:
                task = self._loops.get(name)
                if task is None or task.done():
                    self._loops[name] = asyncio.create_task(self._provider_loop(name))
            try:
                if time.monotonic() >= gauges_due:
                    await self.refresh_gauges()
                    gauges_due = time.monotonic() + self.config.interval_seconds
                if await self.service.store.acquire_lease(
                    "housekeeping", self.owner, self.config.lease_seconds, time.time()
                ):
                    await self.housekeeping()
            except Exception as exc:
                log.error("poller: housekeeping failed: %s", type(exc).__name__)
            await asyncio.sleep(self.config.webhook_interval_seconds)

    def repair_soon(self) -> None:
        """Sweep in the next housekeeping round (after a crash, say)."""
        self._next_repair = 0.0

    async def housekeeping(self) -> None:
        await self.service.settle_pending()
        if time.monotonic() >= self._next_repair:
            self._next_repair = time.monotonic() + self.config.repair_interval_seconds
            self.repairer.window_seconds = self.config.repair_window_seconds
            await self.repairer.sweep()
        await self.webhooks.deliver_due()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.config.sweep_interval_seconds
            await self.service.sweep_expired()
            await self.retention.run_once()
            await self.service.store.prune_rate_windows(int(time.time()) - 3600)
            await self.service.store.prune_idempotency_keys(time.time() - idempotency.KEEP_SECONDS)

    async def stop(self) -> None:
        for task in self._loops.values():
            task.cancel()
        for task in self._loops.values():
            with suppress(asyncio.CancelledError):
                await task
        self._loops.clear()
        with suppress(Exception):  # the store may be gone already; the lease then expires
            await self.service.store.release_lease("housekeeping", self.owner)
