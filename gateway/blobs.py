"""Where uploaded bytes live: a local directory by default, or an S3 bucket.

Every backend writes all-or-nothing: bytes go to a staging place (a `tmp/`
file, an S3 multipart upload) and become the blob only at `commit()`, after
the upload has been fully validated, so a rejected or interrupted upload never
leaves a blob. Reads are streams of chunks; a backend that keeps blobs as local
files also offers their path, so downloads can be sent straight from the page cache
(`mapped`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Protocol

from gateway.config import BlobsConfig
from providers.base import ByteStream
from providers.context import BlobStore

CHUNK = 256 * 1024
# mmap windows of a download: big enough for few syscalls, small enough that the
# windows the socket has not yet taken add little to RSS.
WINDOW = 2 * 1024 * 1024

STALE_PART_SECONDS = 3600.0


class Blobs(BlobStore, Protocol):
    """The gateway's blob store; adapters see it as a `providers.context.BlobStore`."""

    async def close(self) -> None: ...


class LocalBlobWriter:
    def __init__(self, final: Path, partial: Path) -> None:
        self._final = final
        self._partial = partial
        self._fh: IO[bytes] = open(partial, "wb")  # noqa: SIM115 - closed in commit/abort

    async def write(self, chunk: bytes) -> None:
        self._fh.write(chunk)

    async def commit(self) -> None:
        self._fh.close()
        os.replace(self._partial, self._final)

    async def abort(self) -> None:
        self._fh.close()
        self._partial.unlink(missing_ok=True)


class LocalBlobs:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._tmp = directory / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        # Leftovers of a process that died mid-upload; recent ones may be another
        # worker's upload in progress.
        cutoff = time.time() - STALE_PART_SECONDS
        for stale in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()

    def path(self, key: str) -> Path:
        return self.directory / key

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def writer(self, key: str) -> LocalBlobWriter:
        # A part of its own: two writers of one key (replicas finishing the same sandbox
        # batch) each commit whole bytes, the last rename wins.
        part = self._tmp / f"{key}.{secrets.token_hex(6)}.part"
        return LocalBlobWriter(self.path(key), part)

    def open(self, key: str) -> ByteStream:
        return self._open(key)

    @asynccontextmanager
    async def _open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        with open(self.path(key), "rb") as fh:
            yield _read_chunks(fh)

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self.path(key).exists()

    async def close(self) -> None:
        return None


async def _read_chunks(fh: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk


@asynccontextmanager
async def mapped(path: Path) -> AsyncIterator[AsyncIterator[memoryview]]:
    """A local file as memoryviews of mmap windows, for downloads.

    The socket send copies straight from the page cache: no read() copy and no
    executor hop, which is what aiohttp's sendfile fallback costs under uvloop (it
    has no loop.sendfile). Blobs are never rewritten in place, so a window stays valid.
    """
    with open(path, "rb") as fh:
        yield _windows(fh.fileno(), os.fstat(fh.fileno()).st_size)


async def _windows(fd: int, size: int) -> AsyncIterator[memoryview]:
    offset = 0
    while offset < size:
        length = min(WINDOW, size - offset)
        window = mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset)
        window.madvise(mmap.MADV_WILLNEED)  # start the read-ahead of a cold file
        # The transport may still hold the view after the next window is made; the
        # mapping goes when the last view of it does.
        yield memoryview(window)
        offset += length


async def open_blobs(config: BlobsConfig) -> Blobs:
    """The backend `blobs:` selects; the caller closes it."""
    if config.s3 is not None:
        from gateway.blobs_s3 import S3Blobs

        return await S3Blobs.connect(config.s3)
    assert config.dir is not None  # BlobsConfig guarantees one of the two
    return LocalBlobs(config.dir)
