"""Sharded batches: one client batch run as child batches at several providers, its
failed lines healed elsewhere, its results merged into one output and one error file.

The parent row (provider `shard`) never reaches a provider. Its plan (providers, caps
and heal rule, fixed at create) is kept in the store; its children are ordinary batch
rows, created exactly once (`creates`), polled, kept and accounted like any other, and
hidden from the tenant. The poller advances a parent under its lease:

- split: the input is cut into children; one transaction inserts them all, under ids
  derived from the parent, so a split redone after a crash meets them and stops there.
- run: children are created (a crash leaves them to `settle_pending`, which finds them
  by tag or creates them again). Each child that ends is examined once: its failed
  lines whose code the heal rule names go to a heal child on the next provider (a
  unique index allows one heal per child, whoever examines it).
- merge: once every child ended and was examined, the results are merged and the
  parent ends, with its webhook, in one write.

A retrieve only reads: status and counts come from the children's rows. The merged
output file exists (and can be read, partially) from the first child that finished.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from gateway.config import SHARDED
from gateway.creates import CreateUseCases, Unsettled, request_for
from gateway.routing import Sharding
from gateway.shard_files import (
    Slice,
    failed_ids,
    select_lines,
    split_input,
)
from gateway.shard_plan import Plan, progress, replace_plan, shard_error, spread
from gateway.shard_results import ShardResults, _InputGone
from gateway.store import BatchRecord, FileRecord
from gateway.store.base import ShardRow
from gateway.wire import CreateBatchBody, new_batch_object
from providers.base import TERMINAL_STATUSES, ProviderError

log = logging.getLogger("gateway.sharding")

# Children created at once by one advance.
CREATE_CONCURRENCY = 4


class ShardUseCases(ShardResults, CreateUseCases):
    instance_id: str
    # Children whose create runs in this process now.
    _starting: set[str]

    async def create_sharded(
        self, record: BatchRecord, file: FileRecord, sharding: Sharding
    ) -> None:
        """Store a sharded batch's plan and its parent row; the poller does the rest."""
        caps = [self.config.providers[t.provider].limits() for t in sharding.across]
        plan = Plan(
            across=tuple((t.provider, t.weight) for t in sharding.across),
            max_lines=min([c[0] for c in caps] + [sharding.max_lines or caps[0][0]]),
            max_bytes=min([c[1] for c in caps] + [sharding.max_bytes or caps[0][1]]),
            salt=secrets.token_hex(8),
            heal_on=sharding.heal_on,
            max_attempts=sharding.heal.max_attempts if sharding.heal else 1,
            codes=sharding.heal.codes if sharding.heal else (),
        )
        record.provider = SHARDED
        record.pending = False
        record.owner = None
        # The plan first: a parent row is never without one.
        await self._save_plan(record.id, plan)
        await self.store.insert_batch(record)

    async def _save_plan(self, parent_id: str, plan: Plan) -> None:
        await self.store.put_provider_state(
            SHARDED, parent_id, plan.as_json(), active=False, now=time.time()
        )

    async def _plan(self, parent: BatchRecord) -> Plan:
        data = await self.store.get_provider_state(SHARDED, parent.id)
        if data is None:
            raise LookupError(f"sharded batch {parent.id} has no plan")
        return Plan.from_json(data)

    # reads

    async def shard_view(self, parent: BatchRecord) -> dict[str, Any]:
        """A running parent as a retrieve shows it (read from its children's rows)."""
        if parent.status in TERMINAL_STATUSES:
            return parent.object
        children = await self.store.shard_children(parent.id)
        return progress(parent, children, await self._plan(parent))

    # cancel

    async def cancel_sharded(self, parent: BatchRecord) -> dict[str, Any]:
        plan = await self._plan(parent)
        if not plan.cancelled:
            await self._save_plan(parent.id, replace_plan(plan, cancelled=True))
        parent.object = {**parent.object, "status": "cancelling"}
        if parent.object.get("cancelling_at") is None:
            parent.object["cancelling_at"] = int(time.time())
        await self.store.update_batch(parent)
        for _, child in await self.store.shard_children(parent.id):
            await self._cancel_child(child)
        return parent.object

    async def _cancel_child(self, child: BatchRecord) -> None:
        """Best effort: a child not cancelled now is cancelled by the next advance."""
        if child.pending or child.upstream_id is None:
            return  # still being created: cancelled once it exists
        if child.status in TERMINAL_STATUSES or child.status == "cancelling":
            return
        provider = self.providers.get(child.provider)
        if provider is None:
            return
        try:
            await provider.cancel_batch(child.upstream_id)
            upstream = await provider.get_batch(child.upstream_id)
        except ProviderError as exc:
            log.warning("batch %s: cancel of a child failed (%s)", child.parent_id, exc.kind)
            return
        if upstream.status in ("validating", "in_progress", "finalizing"):
            upstream.status = "cancelling"
        await self._apply(child, upstream)

    # the poller's step

    async def advance_shard(self, parent: BatchRecord) -> None:
        """Move a sharded batch on by one step (the poller holds its lease)."""
        if parent.status in TERMINAL_STATUSES:
            return
        try:
            plan = await self._plan(parent)
        except LookupError:
            await self._fail(parent, shard_error("gateway_interrupted", "The batch lost its plan."))
            return
        children = await self.store.shard_children(parent.id)
        if not children:
            try:
                await self._split(parent, plan)
            except _InputGone:
                await self._fail(parent, shard_error("input_file_gone", "The input file is gone."))
                return
            children = await self.store.shard_children(parent.id)
        await self._start_children(children)
        for row, child in children:
            if child.status not in TERMINAL_STATUSES:
                if plan.cancelled:
                    await self._cancel_child(child)
            elif not row.examined:
                await self._examine(parent, plan, row, child)
        children = await self.store.shard_children(parent.id)
        await self._start_children(children)
        if all(c.status in TERMINAL_STATUSES and r.examined for r, c in children):
            await self._finish(parent, plan, children)
            return
        obj = progress(parent, children, plan)
        if obj.get("output_file_id") is None and any(
            c.status in TERMINAL_STATUSES and c.object.get("output_file_id") for _, c in children
        ):
            obj["output_file_id"] = await self._partial_file(parent)
        if obj != parent.object:
            parent.object = obj
            await self.store.update_batch(parent)

    async def _split(self, parent: BatchRecord, plan: Plan) -> None:
        source = await self.store.get_file(parent.input_file_id)
        if source is None or source.blob is None:
            raise _InputGone
        keys: list[str] = []

        def writer_for(i: int) -> Any:
            keys.append(plan.child_ids(parent.id, i, 1)[1])
            return self.blobs.writer(keys[-1])

        slices = await split_input(
            partial(self.blobs.open, source.blob),
            writer_for,
            lines=source.line_count or 0,
            size=source.bytes,
            max_lines=plan.max_lines,
            max_bytes=plan.max_bytes,
        )
        providers = spread(len(slices), plan.across)
        files, batches, rows = [], [], []
        for i, (piece, provider) in enumerate(zip(slices, providers, strict=True)):
            batch_id, file_id = plan.child_ids(parent.id, i, 1)
            file = self._child_file(parent, source, batch_id, file_id, piece)
            files.append(file)
            batches.append(self._child(parent, batch_id, provider, file))
            rows.append(ShardRow(batch_id, parent.id, i, 1, piece.lines))
        if await self.store.add_children(files, batches, rows):
            self.events.sharded(providers, "split")
            log.info("batch %s split into %d children", parent.id, len(rows))

    def _child_file(
        self, parent: BatchRecord, source: FileRecord, batch_id: str, file_id: str, piece: Slice
    ) -> FileRecord:
        return FileRecord(
            id=file_id,
            tenant=parent.tenant,
            purpose="batch",
            filename=f"{file_id}.jsonl",
            bytes=piece.bytes,
            created_at=int(time.time()),
            expires_at=source.expires_at,
            line_count=piece.lines,
            endpoint=source.endpoint,
            models=tuple(sorted(piece.models)),
            blob=file_id,
            # Hides it from the tenant's file list, with the child's other files.
            batch_id=batch_id,
        )

    def _child(
        self, parent: BatchRecord, batch_id: str, provider: str, file: FileRecord
    ) -> BatchRecord:
        now = int(time.time())
        metadata = {
            k: v
            for k, v in (parent.object.get("metadata") or {}).items()
            if k != "gateway_provider"
        }
        body = CreateBatchBody.model_construct(
            input_file_id=file.id,
            endpoint=parent.object["endpoint"],
            completion_window=parent.object["completion_window"],
            metadata=metadata or None,
        )
        model = file.models[0] if len(file.models) == 1 else None
        return BatchRecord(
            id=batch_id,
            tenant=parent.tenant,
            provider=provider,
            input_file_id=file.id,
            created_at=now,
            object=new_batch_object(batch_id, body, now, model, file.line_count or 0),
            output_ttl=parent.output_ttl,
            owner=self.instance_id,
            parent_id=parent.id,
        )

    async def _start_children(self, children: Sequence[tuple[ShardRow, BatchRecord]]) -> None:
        """Create the children this process owns that are not created yet."""
        mine = [c for _, c in children if c.pending and c.owner == self.instance_id]
        limit = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def start(child: BatchRecord) -> None:
            if child.id in self._starting:
                return
            self._starting.add(child.id)  # one create per child in this process at a time
            try:
                # Read again: `children` may predate a create that ended meanwhile.
                fresh = await self.store.get_batch(child.id)
                if fresh is not None and fresh.pending and fresh.owner == self.instance_id:
                    async with limit:
                        await self._start_child(fresh)
            finally:
                self._starting.discard(child.id)

        await asyncio.gather(*(start(c) for c in mine))

    async def _start_child(self, child: BatchRecord) -> None:
        file = await self.store.get_file(child.input_file_id)
        if file is None:
            await self._fail(child, shard_error("input_file_gone", "The input file is gone."))
            return
        try:
            upstream = await self._create_upstream(
                child, file, request_for(child), (child.provider,), keep=True
            )
        except Unsettled:
            await self.hand_over(child)
            return
        except ProviderError:
            return  # failed (and kept): its lines heal elsewhere or end as errors
        except Exception:
            await self.orphan(child)
            raise
        await self._attach(child, upstream)
        self.events.created(child.provider, child.object["endpoint"])

    async def _examine(
        self,
        parent: BatchRecord,
        plan: Plan,
        row: ShardRow,
        child: BatchRecord,
    ) -> None:
        """Heal an ended child's failed lines on the next provider, if the rule says so."""
        if plan.cancelled or row.attempt >= plan.max_attempts or not plan.heal_on:
            await self.store.mark_examined(row.child_id)
            return
        wanted, _ = await failed_ids(await self._child_files(child), plan.codes)
        if not wanted:
            await self.store.mark_examined(row.child_id)
            return
        provider = plan.heal_on[(row.attempt - 1) % len(plan.heal_on)]
        if provider not in self.providers:
            log.warning("batch %s: heal provider %s is not enabled", parent.id, provider)
            await self.store.mark_examined(row.child_id)
            return
        source = await self.store.get_file(child.input_file_id)
        if source is None or source.blob is None:
            await self.store.mark_examined(row.child_id)
            return
        batch_id, file_id = plan.child_ids(parent.id, row.position, row.attempt + 1)
        piece = await select_lines(
            partial(self.blobs.open, source.blob), wanted, self.blobs.writer(file_id)
        )
        file = self._child_file(parent, source, batch_id, file_id, piece)
        heal = self._child(parent, batch_id, provider, file)
        heal_row = ShardRow(
            batch_id, parent.id, row.position, row.attempt + 1, piece.lines, row.child_id
        )
        if await self.store.add_children([file], [heal], [heal_row]):
            self.events.sharded([provider], "heal")
            self.events.healed(child.provider, provider, piece.lines, 0)
            log.info(
                "batch %s: %d failed lines from %s re-run on %s",
                parent.id,
                piece.lines,
                child.provider,
                provider,
            )
        await self.store.mark_examined(row.child_id)
