"""Background refresh of active batches, so progress shows without clients polling.

One loop per provider: a slow provider only delays its own sweeps. Each sweep
refreshes that provider's non-terminal batches with bounded concurrency, then
sleeps the interval with jitter. The same task settles stale pending creates,
sends due webhooks and, every `sweep_interval_seconds`, removes expired files.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import suppress

from gateway import metrics
from gateway.config import PollerConfig
from gateway.service import GatewayService
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
        self, service: GatewayService, config: PollerConfig, webhooks: WebhookSender
    ) -> None:
        self.service = service
        self.config = config
        self.webhooks = webhooks
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._next_sweep = 0.0

    async def sweep_provider(self, name: str) -> int:
        """Refresh every active batch of one provider; returns how many were refreshed."""
        batches = await self.service.store.active_batches(provider=name)
        limit = asyncio.Semaphore(self.config.concurrency_per_provider)

        async def refresh(record_id: str) -> None:
            async with limit:
                record = await self.service.store.get_batch(record_id)
                if record and not record.pending and record.status not in TERMINAL_STATUSES:
                    await self.service.refresh(record)

        await asyncio.gather(*(refresh(b.id) for b in batches))
        return len(batches)

    async def sweep_once(self) -> int:
        """One sweep of every provider at once (tests and benchmarks call this)."""
        counts = await asyncio.gather(*(self.sweep_provider(n) for n in self.service.providers))
        return sum(counts)

    def _pause(self) -> float:
        jitter = self.config.jitter
        return self.config.interval_seconds * random.uniform(1 - jitter, 1 + jitter)

    async def _provider_loop(self, name: str) -> None:
        while name in self.service.providers:
            try:
                await self.sweep_provider(name)
            except Exception as exc:  # one bad sweep must not stop the loop
                log.error("poller: sweep of %s failed: %s", name, type(exc).__name__)
            await asyncio.sleep(self._pause())

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
            for name in self.service.providers:
                task = self._loops.get(name)
                if task is None or task.done():
                    self._loops[name] = asyncio.create_task(self._provider_loop(name))
            try:
                await self.service.reconcile_pending(self.config.pending_grace_seconds)
                await self.webhooks.deliver_due()
                if time.monotonic() >= gauges_due:
                    await self.refresh_gauges()
                    gauges_due = time.monotonic() + self.config.interval_seconds
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + self.config.sweep_interval_seconds
                    await self.service.sweep_expired()
            except Exception as exc:
                log.error("poller: housekeeping failed: %s", type(exc).__name__)
            await asyncio.sleep(self.config.webhook_interval_seconds)

    async def stop(self) -> None:
        for task in self._loops.values():
            task.cancel()
        for task in self._loops.values():
            with suppress(asyncio.CancelledError):
                await task
        self._loops.clear()
