"""Where uploaded bytes live: a local directory, written atomically.

A blob is written under `tmp/` and renamed into place only once the upload has
been fully validated, so a rejected or interrupted upload never leaves a blob.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import IO

STALE_PART_SECONDS = 3600.0


class BlobWriter:
    def __init__(self, final: Path, partial: Path) -> None:
        self._final = final
        self._partial = partial
        self._fh: IO[bytes] = open(partial, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, chunk: bytes) -> None:
        self._fh.write(chunk)

    def commit(self) -> None:
        self._fh.close()
        os.replace(self._partial, self._final)

    def abort(self) -> None:
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

    def writer(self, key: str) -> BlobWriter:
        return BlobWriter(self.path(key), self._tmp / f"{key}.part")

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()
