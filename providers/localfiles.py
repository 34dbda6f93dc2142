"""Files an adapter keeps on its own disk: input copies and the output/error JSONL it made.

Used by the adapters that have no remote Files API to hand out (sandbox, anthropic,
emulated). `<id>.jsonl` holds the bytes and `<id>.meta.json` the File facts; the sidecar
is written last, so its presence means the data is complete and a crash mid-write leaves
no visible file. Ids come from outside the process, so only ids of this store's own shape
ever become paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from providers.base import ByteStream, InputFile, ProviderError, UpstreamFile, now
from providers.results import UsageTally, dumps, is_output

__all__ = [
    "LocalFileMethods",
    "LocalFiles",
    "ResultSpool",
    "input_lines",
    "read_json",
    "write_json",
]

CHUNK_SIZE = 64 * 1024


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace: readers see the old or the new state, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when there is no such file."""
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return data


def input_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) for each non-blank line, split on \\n only as JSONL is
    defined; numbers count blank lines too, as the gateway's upload validation does."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if raw.strip():
                yield number, raw


class LocalFiles:
    """One directory of files named `<prefix><24 hex>`; `owner` names the store in errors."""

    def __init__(self, directory: Path, prefix: str, owner: str) -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        self.owner = owner
        self._pattern = re.compile(re.escape(prefix) + r"[0-9a-f]{24}")

    def not_found(self, what: str) -> ProviderError:
        return ProviderError("not_found", f"No such {what} in {self.owner}.")

    def new_id(self) -> str:
        return f"{self.prefix}{secrets.token_hex(12)}"

    def path(self, file_id: str) -> Path:
        if not self._pattern.fullmatch(file_id):
            raise self.not_found("file")
        return self.directory / f"{file_id}.jsonl"

    def read_state(self, path: Path, what: str) -> dict[str, Any]:
        data = read_json(path)
        if data is None:
            raise self.not_found(what)
        return data

    def publish(self, file_id: str, filename: str) -> None:
        """Make an already written data file visible (writes its sidecar)."""
        path = self.path(file_id)
        meta = {"id": file_id, "filename": filename, "bytes": path.stat().st_size}
        write_json(path.with_suffix(".meta.json"), meta | {"created_at": now()})

    async def copy_in(self, file: InputFile) -> str:
        """Copy an input file into the store; returns its new id."""
        file_id = self.new_id()
        self.directory.mkdir(parents=True, exist_ok=True)
        if file.path is not None:
            await asyncio.to_thread(shutil.copyfile, file.path, self.path(file_id))
        else:  # a blob that is not a local file (S3): stream it in
            async with file.open() as chunks:
                with self.path(file_id).open("wb") as out:
                    async for chunk in chunks:
                        out.write(chunk)
        self.publish(file_id, file.filename)
        return file_id

    async def info(self, file_id: str) -> UpstreamFile:
        meta = self.read_state(self.path(file_id).with_suffix(".meta.json"), "file")
        return UpstreamFile(**meta)

    @contextlib.asynccontextmanager
    async def open(self, file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The file's bytes as chunks; a missing or unfinished file raises on entry."""
        await self.info(file_id)
        fh = self.path(file_id).open("rb")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := fh.read(CHUNK_SIZE):
                yield chunk

        try:
            yield chunks()
        finally:
            fh.close()


class LocalFileMethods:
    """The Provider file methods for an adapter whose files all live in `self.files`:
    uploads are copied in, output/error files are the ones it published there."""

    files: LocalFiles
    remote_files = False

    async def upload_file(self, file: InputFile) -> str:
        return await self.files.copy_in(file)

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        return await self.files.info(upstream_file_id)

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self.files.open(upstream_file_id)


class ResultSpool:
    """A batch's output and error JSONL while they are being written, then published into
    a LocalFiles store as two files (an empty one becomes no file, as at OpenAI).

    The data is written in place under file ids chosen up front (pass `file_ids` to reuse
    the ids a batch recorded earlier); it stays invisible until `publish` writes the
    sidecars, so publishing twice after a crash is harmless. `durable=True` writes every
    line with one unbuffered write, so after a crash the files hold whole lines only (plus
    at most one torn tail, which `recover` cuts off): the files themselves are the record
    of which requests finished.
    """

    def __init__(
        self,
        files: LocalFiles,
        stem: str,
        *,
        file_ids: tuple[str, str] | list[str] | None = None,
        durable: bool = False,
    ) -> None:
        self.files = files
        self.stem = stem
        self.durable = durable
        out_id, err_id = file_ids or (files.new_id(), files.new_id())
        self.file_ids = (out_id, err_id)
        self.paths = (files.path(out_id), files.path(err_id))
        self.completed = 0
        self.failed = 0
        self.tally = UsageTally()
        self._handles: tuple[IO[bytes], IO[bytes]] | None = None

    @contextmanager
    def writing(self, *, append: bool = False) -> Iterator[ResultSpool]:
        self.files.directory.mkdir(parents=True, exist_ok=True)
        mode, buffering = ("ab" if append else "wb"), (0 if self.durable else -1)
        with contextlib.ExitStack() as stack:
            out, err = (stack.enter_context(p.open(mode, buffering=buffering)) for p in self.paths)
            self._handles = (out, err)
            try:
                yield self
            except BaseException:
                if not self.durable:  # a half-written spool is of no use to anyone
                    stack.close()
                    for path in self.paths:
                        path.unlink(missing_ok=True)
                raise
            finally:
                self._handles = None

    def _count(self, line: dict[str, Any]) -> bool:
        ok = is_output(line)
        if ok:
            self.completed += 1
            self.tally.add(line["response"].get("body"))
        else:
            self.failed += 1
        return ok

    def add(self, line: dict[str, Any]) -> None:
        assert self._handles is not None, "add() outside writing()"
        ok = self._count(line)
        self._handles[0 if ok else 1].write(dumps(line))

    def recover(self) -> set[str]:
        """Re-read what an earlier run wrote: restores the counts and usage and returns the
        custom_ids already finished. A torn last line (a crash mid-write) is cut off."""
        done: set[str] = set()
        for path in self.paths:
            if not path.exists():
                continue
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) != len(data):
                with path.open("r+b") as fh:
                    fh.truncate(len(whole))
            for raw in whole.splitlines():
                line = orjson.loads(raw)
                self._count(line)
                done.add(line["custom_id"])
        return done

    def publish(self) -> dict[str, Any]:
        """Make the files visible; returns the result facts a batch keeps in its state."""
        published: list[str | None] = []
        for file_id, path, kind, lines in zip(
            self.file_ids,
            self.paths,
            ("output", "error"),
            (self.completed, self.failed),
            strict=True,
        ):
            if lines == 0:
                path.unlink(missing_ok=True)
                published.append(None)
            else:
                self.files.publish(file_id, f"{self.stem}_{kind}.jsonl")
                published.append(file_id)
        return {
            "output_file_id": published[0],
            "error_file_id": published[1],
            "completed": self.completed,
            "failed": self.failed,
            "usage": self.tally.usage(),
        }
