"""A sharded batch's results: each child's files as the merge reads them, the merged
output while children run (partial), and the merge that ends the parent."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

from gateway import ids
from gateway.file_service import FileUseCases
from gateway.shard_files import ChildFiles, Merger, custom_ids
from gateway.shard_plan import Plan, missing_code, shard_error
from gateway.store import BatchRecord, FileRecord
from gateway.store.base import ShardRow
from providers.base import TERMINAL_STATUSES, ByteStream

log = logging.getLogger("gateway.sharding")


class _InputGone(Exception):
    """A sharded batch's (or child's) input file is gone."""


class ShardResults(FileUseCases):
    batch_ended: asyncio.Event
    usage_due: asyncio.Event
    # `BatchSync._event` (declared, not defined: a definition here would shadow it).
    _event: Callable[[BatchRecord], bytes | None]

    async def partial_output(self, record: FileRecord) -> ByteStream:
        """The merged output of a parent still running: the outputs of the children that
        ended so far, one after another."""
        assert record.batch_id is not None
        children = await self.store.shard_children(record.batch_id)
        files = []
        for _, child in children:
            file_id = child.object.get("output_file_id")
            if child.status in TERMINAL_STATUSES and isinstance(file_id, str):
                found = await self.store.get_file(file_id)
                if found is not None:
                    files.append(found)
        return self._concatenated(files)

    @asynccontextmanager
    async def _concatenated(self, files: list[FileRecord]) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncGenerator[bytes, None]:
            for file in files:
                async with await self.open_bytes(file) as part:
                    async for chunk in part:
                        yield chunk

        gen = chunks()
        try:
            yield gen
        finally:
            await gen.aclose()

    async def _child_files(self, child: BatchRecord) -> ChildFiles:
        source = await self.store.get_file(child.input_file_id)
        if source is None or source.blob is None:
            raise _InputGone
        return ChildFiles(
            input=partial(self.blobs.open, source.blob),
            output=await self._opener(child.object.get("output_file_id")),
            errors=await self._opener(child.object.get("error_file_id")),
            missing=missing_code(child),
        )

    async def _opener(self, file_id: Any) -> Any:
        if not isinstance(file_id, str):
            return None
        file = await self.store.get_file(file_id)
        if file is None:
            return None

        @asynccontextmanager
        async def opened() -> AsyncIterator[AsyncIterator[bytes]]:
            async with await self.open_bytes(file) as chunks:
                yield chunks

        return opened

    def _merged_file(
        self, parent: BatchRecord, kind: str, file_id: str, blob: str | None = None, size: int = 0
    ) -> FileRecord:
        """The parent's output or error file (without a blob: its partial output)."""
        now = int(time.time())
        ttl = parent.output_ttl
        return FileRecord(
            id=file_id,
            tenant=parent.tenant,
            purpose="batch_output",
            filename=f"{parent.id}_{kind}.jsonl",
            bytes=size,
            created_at=now,
            expires_at=now + ttl if ttl else None,
            blob=blob,
            batch_id=parent.id,
        )

    async def _partial_file(self, parent: BatchRecord) -> str:
        return await self.store.insert_file(self._merged_file(parent, "output", ids.new_file_id()))

    async def _finish(
        self, parent: BatchRecord, plan: Plan, children: Sequence[tuple[ShardRow, BatchRecord]]
    ) -> None:
        """Merge every child's results into the parent's files and end the parent."""
        if parent.object["status"] != "finalizing" and not plan.cancelled:
            parent.object = {**parent.object, "status": "finalizing"}
            parent.object["finalizing_at"] = int(time.time())
            await self.store.update_batch(parent)
        output_id = parent.object.get("output_file_id") or ids.new_file_id()
        error_id = ids.new_file_id()
        heals = {row.heals: child for row, child in children if row.heals}
        # Keys of their own: a second merge (another process's) never writes into these.
        out_key, err_key = (
            f"{output_id}.{secrets.token_hex(4)}",
            f"{error_id}.{secrets.token_hex(4)}",
        )
        out, err = self.blobs.writer(out_key), self.blobs.writer(err_key)
        merger = Merger(out, err, parent.id, error_id)
        try:
            for row, child in children:
                healer = heals.get(row.child_id)
                rerun = (
                    await custom_ids((await self._child_files(healer)).input) if healer else set()
                )
                succeeded = await merger.add(await self._child_files(child), rerun)
                if row.heals is not None:
                    source = next(c for r, c in children if r.child_id == row.heals)
                    self.events.healed(source.provider, child.provider, 0, succeeded)
            await merger.finish()
            await out.commit()
            await err.commit()
        except BaseException:
            with suppress(Exception):
                await out.abort()
                await err.abort()
            raise
        await self._end(parent, plan, children, merger, (output_id, out_key), (error_id, err_key))

    async def _keep_merged(
        self, parent: BatchRecord, kind: str, file_id: str, key: str, lines: int, size: int
    ) -> str | None:
        """Give the merged blob its file row; None (blob deleted) when it has no lines or
        another process's merge got there first."""
        if lines and file_id == parent.object.get("output_file_id"):
            if await self.store.set_file_blob(file_id, key, size):
                return file_id  # the partial output's row, whole now
        elif lines:
            return await self.store.insert_file(self._merged_file(parent, kind, file_id, key, size))
        await self.blobs.delete(key)
        if not lines and file_id == parent.object.get("output_file_id"):
            await self.store.delete_file(file_id)
        return file_id if lines else None

    async def _end(
        self,
        parent: BatchRecord,
        plan: Plan,
        children: Sequence[tuple[ShardRow, BatchRecord]],
        merger: Merger,
        output: tuple[str, str],
        errors: tuple[str, str],
    ) -> None:
        obj = dict(parent.object)
        partial = obj.get("output_file_id")
        now = int(time.time())
        if obj.get("in_progress_at") is None:
            obj["in_progress_at"] = obj.get("finalizing_at") or now
        made = [
            await self._keep_merged(
                parent, "output", *output, merger.completed, merger.output_bytes
            ),
            await self._keep_merged(parent, "error", *errors, merger.failed, merger.error_bytes),
        ]
        obj["output_file_id"], obj["error_file_id"] = made
        obj["request_counts"] = {
            "total": obj["request_counts"]["total"],
            "completed": merger.completed,
            "failed": merger.failed,
        }
        if plan.cancelled:
            obj["status"], obj["cancelled_at"] = "cancelled", now
        elif all(c.status == "failed" for _, c in children):
            obj["status"], obj["failed_at"] = "failed", now
            first = children[0][1].object.get("errors") if children else None
            obj["errors"] = first or {"object": "list", "data": [shard_error("batch_failed", "")]}
        elif merger.expired:
            obj["status"], obj["expired_at"] = "expired", now
        else:
            obj["status"], obj["completed_at"] = "completed", now
        parent.object = obj
        if not await self.store.update_batch(parent, event=self._event(parent)):
            # Ended by another process's merge: the files this one made are not used.
            for file_id, (_, key) in zip(made, (output, errors), strict=True):
                if file_id is not None and file_id != partial:
                    await self.store.delete_file(file_id)
                    await self.blobs.delete(key)
            return
        self.events.terminal(parent)
        self.events.failed_everywhere(merger.failed)
        self.batch_ended.set()
        self.usage_due.set()
        log.info("batch %s: %s after merging its children", parent.id, obj["status"])
