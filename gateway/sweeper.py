"""Removal of expired files: the row first, then the blob.

Row first, so a crash in between leaves at worst an unreferenced blob, never a
row whose bytes are gone. Output files the provider holds have no blob; only
their row goes. Files still read by an active batch are kept until it ends.
"""

from __future__ import annotations

import logging

from gateway.blobs import Blobs
from gateway.store import Store

log = logging.getLogger("gateway.sweeper")

BATCH_SIZE = 500


async def sweep_expired(store: Store, blobs: Blobs, now: float, *, accounted: bool = True) -> int:
    """`accounted`: children of sharded batches are kept until accounted (usage is on)."""
    await store.expire_child_files(now, accounted=accounted)
    removed = 0
    while True:
        expired = await store.expired_files(now, BATCH_SIZE)
        for record in expired:
            await store.delete_file(record.id)
            if record.blob:
                await blobs.delete(record.blob)
        removed += len(expired)
        if len(expired) < BATCH_SIZE:
            break
    if removed:
        log.info("sweeper: removed %d expired files", removed)
    return removed
