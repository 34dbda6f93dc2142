"""Files an adapter hands out as its own: input copies and the output/error JSONL it made.

Used by the adapters that have no remote Files API to hand out (sandbox, anthropic,
emulated). Nothing is kept on local disk, so any replica serves any file and S3 works for
every provider type: the bytes are a blob of the gateway's blob store (`blob_key`), the
File facts (filename, bytes, created_at) are the adapter's state under the file id. The
facts are written after the blob is committed, so a file is visible only once complete
and a crash mid-write leaves none. Ids come from outside the process, so only ids of this
store's own shape ever become blob keys.

`import_legacy_dir` moves the files and batch states that earlier versions kept in a
local folder (`<id>.jsonl` + `<id>.meta.json`, `<batch>.json`) into the stores once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from providers.base import ByteStream, InputFile, ProviderError, UpstreamFile, now
from providers.context import BlobStore, BlobWriter, ProviderContext
from providers.results import LineCounts, dumps

__all__ = [
    "Once",
    "ResultSpool",
    "StoredFileMethods",
    "StoredFiles",
    "import_legacy_dir",
    "write_blob",
]

log = logging.getLogger("providers.stored_files")

CHUNK_SIZE = 256 * 1024


async def write_blob(blobs: BlobStore, key: str, chunks: AsyncIterable[bytes]) -> int:
    """All of `chunks` as one committed blob, or nothing; returns its size."""
    writer = blobs.writer(key)
    size = 0
    try:
        async for chunk in chunks:
            await writer.write(chunk)
            size += len(chunk)
        await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    return size


async def _file_chunks(fh: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := fh.read(CHUNK_SIZE):
        yield chunk


class StoredFiles:
    """Files an adapter hands out as its own (input copies, result files): bytes in the
    blob store under `blob_key(id)`, facts (filename, bytes, created_at) in the StateStore
    under the file id. Ids are `<prefix><24 hex>`; `owner` names the store in errors."""

    def __init__(self, context: ProviderContext, prefix: str, owner: str) -> None:
        self.state = context.state
        self.blobs = context.blobs
        self.prefix = prefix
        self.owner = owner
        self.pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{24}")

    def not_found(self, what: str) -> ProviderError:
        return ProviderError("not_found", f"No such {what} in {self.owner}.")

    def new_id(self) -> str:
        return f"{self.prefix}{secrets.token_hex(12)}"

    def blob_key(self, file_id: str) -> str:
        """The blob of a file id of this store's shape (any other id is not found); the
        prefix keeps it apart from the gateway's own blobs."""
        if not self.pattern.fullmatch(file_id):
            raise self.not_found("file")
        return f"upstream-{file_id}"

    async def copy_in(self, file: InputFile) -> str:
        """Stream an input file into a new blob and publish it; returns its id."""
        file_id = self.new_id()
        async with file.open() as chunks:
            size = await write_blob(self.blobs, self.blob_key(file_id), chunks)
        await self.publish(file_id, file.filename, size)
        return file_id

    async def publish(
        self, file_id: str, filename: str, size: int, *, created_at: int | None = None
    ) -> None:
        """Make a committed blob visible as a file (writes its facts)."""
        self.blob_key(file_id)
        facts = {"id": file_id, "filename": filename, "bytes": size}
        await self.state.save(file_id, facts | {"created_at": created_at or now()})

    async def info(self, file_id: str) -> UpstreamFile:
        self.blob_key(file_id)
        facts = await self.state.load(file_id)
        if facts is None:
            raise self.not_found("file")
        return UpstreamFile(
            id=facts["id"],
            bytes=facts["bytes"],
            created_at=facts["created_at"],
            filename=facts["filename"],
        )

    def open(self, file_id: str) -> ByteStream:
        """The file's bytes as chunks; a missing or unpublished file raises on entry."""
        return self._open(file_id)

    @contextlib.asynccontextmanager
    async def _open(self, file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        await self.info(file_id)
        async with contextlib.AsyncExitStack() as stack:
            try:
                chunks = await stack.enter_async_context(self.blobs.open(self.blob_key(file_id)))
            except FileNotFoundError:
                raise self.not_found("file") from None
            yield chunks

    async def lines(self, file_id: str) -> AsyncIterator[tuple[int, bytes]]:
        """(1-based line number, raw line) for each non-blank line, split on \\n only as
        JSONL is defined; numbers count blank lines too, as the gateway's upload
        validation does."""
        pending, number = b"", 0
        async with self.open(file_id) as chunks:
            async for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    number += 1
                    if raw.strip():
                        yield number, raw
        if pending.strip():
            yield number + 1, pending

    async def delete(self, file_id: str) -> None:
        """Facts first: the file is gone for readers before its bytes are."""
        key = self.blob_key(file_id)
        await self.state.delete(file_id)
        await self.blobs.delete(key)


class StoredFileMethods:
    """The Provider file methods for an adapter whose files all live in `self.files`:
    uploads are copied in, output/error files are the ones it published there.

    Every call awaits `_ready()` first, which imports `legacy_dir` once when the adapter
    has one: its files, and its batch states (files named by `legacy_states`) handed to
    the adapter's `_adopt_legacy`."""

    files: StoredFiles
    remote_files = False
    legacy_dir: Path | None = None
    legacy_states: re.Pattern[str] = re.compile(r"(?!)")
    _imported: Once | None = None

    async def _ready(self) -> None:
        if self.legacy_dir is not None:
            if self._imported is None:
                self._imported = Once(self._import_legacy)
            await self._imported()

    async def _import_legacy(self) -> None:
        assert self.legacy_dir is not None
        await import_legacy_dir(self.legacy_dir, self.files, self.legacy_states, self._adopt_legacy)

    async def _adopt_legacy(self, state: dict[str, Any]) -> None:
        """Store one batch state of the legacy folder as the adapter stores its own
        (skipping one it has already)."""
        raise NotImplementedError

    async def upload_file(self, file: InputFile) -> str:
        await self._ready()
        return await self.files.copy_in(file)

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        await self._ready()
        return await self.files.info(upstream_file_id)

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self._open_content(upstream_file_id)

    @contextlib.asynccontextmanager
    async def _open_content(self, upstream_file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        await self._ready()
        async with self.files.open(upstream_file_id) as chunks:
            yield chunks


class ResultSpool(LineCounts):
    """A batch's output and error JSONL while they are being written to two blobs, then
    published as two files (an empty one becomes no file, as at OpenAI).

    Use as `async with ResultSpool(...) as spool: ...; await spool.publish()`; leaving the
    block unpublished (an error) aborts both writers, so nothing half-written is kept.
    Pass `file_ids` to write under ids recorded earlier: two processes finishing the same
    batch then write the same files, and publishing twice is harmless.
    """

    def __init__(
        self, files: StoredFiles, stem: str, *, file_ids: tuple[str, str] | list[str] | None = None
    ) -> None:
        self.files = files
        self.stem = stem
        out_id, err_id = file_ids or (files.new_id(), files.new_id())
        self.file_ids = (out_id, err_id)
        self.keys = (files.blob_key(out_id), files.blob_key(err_id))
        super().__init__()
        self._sizes = [0, 0]
        self._writers: tuple[BlobWriter, BlobWriter] | None = None

    async def __aenter__(self) -> ResultSpool:
        self._writers = (
            self.files.blobs.writer(self.keys[0]),
            self.files.blobs.writer(self.keys[1]),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writers is not None:  # not published: a half-written spool helps no one
            writers, self._writers = self._writers, None
            for writer in writers:
                await writer.abort()

    async def add(self, line: dict[str, Any]) -> None:
        assert self._writers is not None, "add() outside `async with`"
        ok = self.count(line)
        data = dumps(line)
        self._sizes[0 if ok else 1] += len(data)
        await self._writers[0 if ok else 1].write(data)

    async def publish(self) -> dict[str, Any]:
        """Commit and publish the files; returns the result facts a batch keeps."""
        assert self._writers is not None, "publish() outside `async with` or twice"
        writers, self._writers = self._writers, None
        published: list[str | None] = []
        for writer, file_id, kind, lines, size in zip(
            writers,
            self.file_ids,
            ("output", "error"),
            (self.completed, self.failed),
            self._sizes,
            strict=True,
        ):
            if lines == 0:
                await writer.abort()
                published.append(None)
            else:
                await writer.commit()
                await self.files.publish(file_id, f"{self.stem}_{kind}.jsonl", size)
                published.append(file_id)
        return {
            "output_file_id": published[0],
            "error_file_id": published[1],
            "completed": self.completed,
            "failed": self.failed,
            "usage": self.tally.usage(),
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def _import_file(path: Path, files: StoredFiles) -> bool:
    """One `<id>.jsonl` + `<id>.meta.json` pair into the stores; False when skipped."""
    file_id = path.name.removesuffix(".meta.json")
    meta = _read_json(path)
    if not files.pattern.fullmatch(file_id) or meta is None:
        return False
    if await files.state.load(file_id) is not None:
        return False  # imported before (an import cut short, or another replica)
    with (path.parent / f"{file_id}.jsonl").open("rb") as fh:
        size = await write_blob(files.blobs, files.blob_key(file_id), _file_chunks(fh))
    created = meta.get("created_at")
    await files.publish(
        file_id,
        str(meta.get("filename") or f"{file_id}.jsonl"),
        size,
        created_at=created if isinstance(created, int) else None,
    )
    return True


async def import_legacy_dir(
    directory: Path,
    files: StoredFiles,
    state_pattern: re.Pattern[str],
    save: Callable[[dict[str, Any]], Awaitable[None]],
) -> list[dict[str, Any]]:
    """Move what an earlier version kept in `directory` into the stores, once.

    Published files (`<id>.jsonl` with its `<id>.meta.json`, ids of `files`' shape) become
    blobs + facts; every `<id>.json` whose id matches `state_pattern` is handed to `save`
    (which stores it under the adapter's own key, skipping keys it already has). Then the
    folder is renamed to `<dir>.imported`, so this never runs again and nothing is lost
    (unpublished leftovers stay there). Idempotent: files already in the state are skipped,
    so an import cut short just runs again; a folder another replica renamed meanwhile
    means that replica finished the import. Returns the states handed to `save`.
    """
    if not directory.is_dir():
        return []
    states: list[dict[str, Any]] = []
    try:
        imported = 0
        for path in sorted(directory.glob(f"{files.prefix}*.meta.json")):
            imported += await _import_file(path, files)
        for path in sorted(directory.glob("*.json")):
            stem = path.name.removesuffix(".json")
            if not state_pattern.fullmatch(stem) or (state := _read_json(path)) is None:
                continue
            await save(state)
            states.append(state)
    except FileNotFoundError:
        if directory.exists():
            raise
        return states  # another replica finished the import and renamed the folder
    target = directory.with_name(f"{directory.name}.imported")
    try:
        directory.rename(target if not target.exists() else _free_name(target))
    except FileNotFoundError:
        return states  # renamed by another replica
    except OSError as exc:  # a read-only mount: all is imported, only the next start rescans
        log.warning("%s: could not rename %s after its import: %s", files.owner, directory, exc)
    log.info(
        "%s: imported %d files and %d batch states from %s",
        files.owner,
        imported,
        len(states),
        directory,
    )
    return states


def _free_name(target: Path) -> Path:
    """`<dir>.imported.2`, `.3`, ... when an earlier import already took the name."""
    n = 2
    while (candidate := target.with_name(f"{target.name}.{n}")).exists():
        n += 1
    return candidate


class Once:
    """An async start-up step (a legacy import) run by the first call that needs it and
    awaited by every call; a run that failed is tried again by the next call."""

    def __init__(self, step: Callable[[], Awaitable[None]]) -> None:
        self._step = step
        self._task: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._task = asyncio.ensure_future(self._step())
        await asyncio.shield(task)
