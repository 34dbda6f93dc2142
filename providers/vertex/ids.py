"""The custom_id map of a Vertex batch, kept in the blob store.

Written while the input streams to Cloud Storage, one JSON line per input line in line
order: the custom_id (chat: the line's index is in its request's labels), or `[instance
key, custom_id]` (embeddings: an output line is matched by the instance it echoes). Read
back whenever results are translated, and held compactly meanwhile: the ids' bytes in one
buffer plus one offset per line, so a chat map costs about the size of its custom_ids (the
gateway's own upload validation holds the same set); an embeddings map adds a dict of
instance keys, bounded by Vertex's 30,000 instances per embeddings job.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Any

import orjson

from providers.context import BlobStore, BlobWriter
from providers.http import iter_lines
from providers.vertex.translate import instance_key, line_index

__all__ = ["CustomIds", "IdsWriter", "InstanceIds", "copy_blob", "load_ids"]

_FLUSH = 256 * 1024


class IdsWriter:
    """Collects the map in line order; `flush` writes what was collected."""

    def __init__(self, writer: BlobWriter) -> None:
        self._writer = writer
        self._pending = bytearray()
        self.count = 0

    def add(self, custom_id: str, key: str | None = None) -> int:
        """Note the next line's custom_id (and instance key); returns its index."""
        entry: Any = custom_id if key is None else [key, custom_id]
        self._pending += orjson.dumps(entry) + b"\n"
        self.count += 1
        return self.count - 1

    async def flush(self, force: bool = False) -> None:
        if self._pending and (force or len(self._pending) >= _FLUSH):
            await self._writer.write(bytes(self._pending))
            self._pending.clear()

    async def commit(self) -> None:
        await self.flush(force=True)
        await self._writer.commit()

    async def abort(self) -> None:
        self._pending.clear()
        await self._writer.abort()


class CustomIds:
    """Chat: line index -> custom_id; `match` takes an output line's id by its label."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("Q")
        self._seen = bytearray()

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, raw: bytes) -> None:
        self._data += raw
        self._ends.append(len(self._data))
        self._seen.append(0)

    def get(self, index: int | None) -> str | None:
        if index is None or not 0 <= index < len(self._ends):
            return None
        start = self._ends[index - 1] if index else 0
        value = orjson.loads(self._data[start : self._ends[index]])
        return value if isinstance(value, str) else None

    def match(self, item: dict[str, Any]) -> str | None:
        index = line_index(item)
        custom_id = self.get(index)
        if custom_id is not None and index is not None:
            self._seen[index] = 1
        return custom_id

    def unmatched(self) -> Iterator[str]:
        """The custom_ids no output line was matched to, in line order."""
        for index, seen in enumerate(self._seen):
            custom_id = self.get(index) if not seen else None
            if custom_id is not None:
                yield custom_id


class InstanceIds:
    """Embeddings: an output line's echoed instance -> the next custom_id sent with it."""

    def __init__(self) -> None:
        self._ids = CustomIds()
        self._waiting: dict[str, list[int]] = {}  # key -> indices, last one first

    def append(self, raw: bytes) -> None:
        entry = orjson.loads(raw)
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            return
        self._waiting.setdefault(entry[0], []).append(len(self._ids))
        self._ids.append(orjson.dumps(entry[1]))

    def loaded(self) -> None:
        for indices in self._waiting.values():
            indices.reverse()  # `match` pops from the end: first line first

    def match(self, item: dict[str, Any]) -> str | None:
        waiting = self._waiting.get(instance_key(item.get("instance")))
        if not waiting:
            return None
        index = waiting.pop()
        self._ids._seen[index] = 1
        return self._ids.get(index)

    def unmatched(self) -> Iterator[str]:
        return self._ids.unmatched()


async def load_ids(blobs: BlobStore, key: str, *, embeddings: bool) -> CustomIds | InstanceIds:
    """Raises FileNotFoundError when there is no such map."""
    ids: CustomIds | InstanceIds = InstanceIds() if embeddings else CustomIds()
    async with blobs.open(key) as chunks:
        async for line in iter_lines(chunks):
            ids.append(bytes(line))
    if isinstance(ids, InstanceIds):
        ids.loaded()
    return ids


async def copy_blob(blobs: BlobStore, source: str, target: str) -> None:
    writer = blobs.writer(target)
    try:
        async with blobs.open(source) as chunks:
            async for chunk in chunks:
                await writer.write(bytes(chunk))
        await writer.commit()
    except BaseException:
        await writer.abort()
        raise
