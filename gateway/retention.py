"""Provider retention: what the gateway no longer needs is deleted at the provider.

Per provider (`retention:` in config.yaml, both on by default): the provider's copy of
an input file once no batch there still runs from it (a later batch uploads it again),
and its output and error files once the gateway holds its own copy
(`blobs.keep_provider_outputs`). A client's delete of a file queues every provider copy
of it, whatever the config. Copies are queued in the store (`provider_deletions`) and
deleted by the housekeeping replica; a refused delete is retried with backoff, counted
in `gateway_provider_deletions_total{provider,outcome}`, and listed by
`batch-gateway leftovers` until it succeeds.
"""

from __future__ import annotations

import logging
import time

from gateway.service import GatewayService
from providers.base import ProviderError
from providers.retry import backoff_seconds

log = logging.getLogger("gateway.retention")

# Rows queued and deletions tried per round.
BATCH = 200
RETRY_BASE_SECONDS = 30.0
RETRY_CAP_SECONDS = 3600.0


class Retention:
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def run_once(self) -> int:
        """Queue what is no longer needed, then try the due deletions; returns how many
        copies were deleted."""
        svc, now = self.service, time.time()
        remote = [p.name for p in svc.providers.values() if p.remote_files]
        settings = {name: svc.config.providers[name].retention for name in remote}
        await svc.store.queue_ended_inputs(
            [n for n in remote if settings[n].delete_inputs], now, BATCH
        )
        await svc.store.queue_kept_outputs(
            [n for n in remote if settings[n].delete_outputs], now, BATCH
        )
        deleted = 0
        for item in await svc.store.due_deletions(now, BATCH):
            provider = svc.providers.get(item.provider)
            if provider is None:
                continue  # not configured now: it stays listed as a leftover
            try:
                await provider.delete_file(item.upstream_id)
            except ProviderError as exc:
                if exc.kind != "not_found":  # gone already is as good as deleted
                    delay = backoff_seconds(
                        item.attempts, RETRY_BASE_SECONDS, exc.retry_after, cap=RETRY_CAP_SECONDS
                    )
                    await svc.store.finish_deletion(
                        item.provider, item.upstream_id, retry_at=now + delay, error=exc.kind
                    )
                    svc.events.provider_deletion(item.provider, "failed")
                    log.warning(
                        "retention: delete of an %s file at %s failed (%s); retry in %.0f s",
                        item.what,
                        item.provider,
                        exc.kind,
                        delay,
                    )
                    continue
            await svc.store.finish_deletion(
                item.provider, item.upstream_id, retry_at=None, error=None
            )
            svc.events.provider_deletion(item.provider, "deleted")
            deleted += 1
        return deleted
