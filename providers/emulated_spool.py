"""An emulated batch's results while it runs: durable in parts, without appends.

Blob stores write all-or-nothing (S3 cannot append), so the finished lines are gathered in
memory and written out now and then as new part blobs (one for output lines, one for
error lines), and only then is the batch state saved with the part keys and the counts so
far. The committed parts are the progress record: a line in one is never sent again.
After a crash, the lines that finished since the last flush are sent again — a window of
at most `flush_lines` lines or `flush_seconds` of work. When the batch ends, the parts
are streamed into the final output and error blobs, published as files, and deleted.

Batch state keys kept here: `parts` (a list of `[output key | None, error key | None]`)
and `progress` (`completed`, `failed`, `usage` as of the last flush, which is what a
replica that does not run the batch reports).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from providers.context import BlobStore
from providers.results import LineCounts, dumps
from providers.stored_files import StoredFiles, write_blob

__all__ = ["PartSpool", "import_legacy_spool"]

Json = dict[str, Any]
_KINDS = ("output", "error")


def _part_key(batch_id: str, kind: str) -> str:
    """A fresh key per part: two processes that both believe they run a batch (a lease
    that lapsed) never overwrite each other's parts."""
    return f"upstream-{batch_id}.part-{secrets.token_hex(6)}.{kind}"


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _joined(blobs: BlobStore, keys: list[str]) -> AsyncIterator[bytes]:
    """The blobs `keys` one after the other, streamed."""
    for key in keys:
        async with blobs.open(key) as chunks:
            async for chunk in chunks:
                yield chunk


class PartSpool(LineCounts):
    """The results of one run: counts live in memory, lines durable part by part in
    `state["parts"]`; `save` persists the state (after the parts it names are committed)."""

    def __init__(
        self, files: StoredFiles, state: Json, save: Callable[[], Awaitable[None]]
    ) -> None:
        self.files = files
        self.blobs = files.blobs
        self.state = state
        self._save = save
        state.setdefault("parts", [])
        super().__init__()
        self._pending: tuple[list[bytes], list[bytes]] = ([], [])
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Lines finished but not yet in a committed part."""
        return len(self._pending[0]) + len(self._pending[1])

    def add(self, line: Json) -> None:
        ok = self.count(line)
        self._pending[0 if ok else 1].append(dumps(line))

    async def recover(self) -> set[str]:
        """Re-read the committed parts: restores counts and usage, returns the custom_ids
        finished already."""
        LineCounts.__init__(self)
        done: set[str] = set()
        for part in self.state["parts"]:
            for key in part:
                if key is None:
                    continue
                async with self.blobs.open(key) as chunks:
                    data = b"".join([chunk async for chunk in chunks])
                for raw in data.splitlines():
                    if raw.strip():
                        line = orjson.loads(raw)
                        self.count(line)
                        done.add(line["custom_id"])
        return done

    async def flush(self) -> bool:
        """Commit the pending lines as a new part, then save the state naming it; False
        when nothing was pending. On a failure the lines stay pending for the next try."""
        async with self._lock:
            taken, self._pending = self._pending, ([], [])
            if not (taken[0] or taken[1]):
                return False
            # Taken with the lines, before any await: exactly what the committed parts hold.
            snapshot = self.progress()
            try:
                part: list[str | None] = []
                for kind, lines in zip(_KINDS, taken, strict=True):
                    if not lines:
                        part.append(None)
                        continue
                    key = _part_key(self.state["id"], kind)
                    await write_blob(self.blobs, key, _one(b"".join(lines)))
                    part.append(key)
            except BaseException:
                self._pending = (taken[0] + self._pending[0], taken[1] + self._pending[1])
                raise
            self.state["parts"].append(part)
            self.state["progress"] = snapshot
            await self._save()
            return True

    async def publish(self, file_ids: Iterable[str], stem: str) -> Json:
        """Flush, then stream the parts into the final files (an empty one becomes no file,
        as at OpenAI); returns the result facts a batch keeps. Publishing again after a
        crash rewrites the same files under the same ids."""
        await self.flush()
        published: list[str | None] = []
        for index, (kind, file_id, lines) in enumerate(
            zip(_KINDS, file_ids, (self.completed, self.failed), strict=True)
        ):
            if lines == 0:
                published.append(None)
                continue
            keys = [part[index] for part in self.state["parts"] if part[index] is not None]
            size = await write_blob(
                self.blobs, self.files.blob_key(file_id), _joined(self.blobs, keys)
            )
            await self.files.publish(file_id, f"{stem}_{kind}.jsonl", size)
            published.append(file_id)
        files = {"output_file_id": published[0], "error_file_id": published[1]}
        return files | self.progress()

    async def delete_parts(self, parts: list[list[str | None]]) -> None:
        """Drop the parts once the final files are published and the state says so."""
        for part in parts:
            for key in part:
                if key is not None:
                    await self.blobs.delete(key)


def _whole_lines(path: Path) -> bytes:
    """A legacy append-only spool file up to its last whole line (a crash mid-write leaves
    a torn tail); empty when there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b""
    return data[: data.rfind(b"\n") + 1]


def _legacy_spool(directory: Path, state: Json, kind: str, file_id: str) -> Path:
    """Where an earlier version appended an unfinished batch's lines: in place under its
    result file ids, or (older still) `<batch>.output.part` / `.error.part`."""
    part = directory / f"{state['id']}.{kind}.part"
    return part if part.exists() else directory / f"{file_id}.jsonl"


async def import_legacy_spool(blobs: BlobStore, state: Json, directory: Path) -> None:
    """The append-only output/error files an earlier version wrote in `directory` for an
    unfinished batch become its first part, so none of those lines is sent again."""
    part: list[str | None] = []
    counts = LineCounts()
    for kind, file_id in zip(_KINDS, state["result_files"], strict=True):
        path = _legacy_spool(directory, state, kind, file_id)
        data = await asyncio.to_thread(_whole_lines, path)
        if not data.strip():
            part.append(None)
            continue
        for raw in data.splitlines():
            if raw.strip():
                counts.count(orjson.loads(raw))
        key = _part_key(state["id"], kind)
        await write_blob(blobs, key, _one(data))
        part.append(key)
    state["parts"] = [part] if any(part) else []
    state["progress"] = counts.progress()
