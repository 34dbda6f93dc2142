"""The bytes of sharded batches: an input cut into children, a child's failed lines picked
out for a heal, and the children's results merged into one output and one error file.

Everything streams: a line is held, never a file. What is kept is one child's custom_ids
at a time (at most a provider's batch size), so memory does not grow with the batch.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.config import EMBEDDING_INPUTS
from gateway.result_lines import line_ids
from providers.base import ByteStream
from providers.context import BlobWriter
from providers.http import iter_lines
from providers.results import dumps, error_line

__all__ = [
    "ChildFiles",
    "Merger",
    "Slice",
    "children_for",
    "custom_ids",
    "failed_ids",
    "heal_matches",
    "select_lines",
    "split_input",
]

Opener = Callable[[], ByteStream]
# Bytes gathered before one write to a blob.
WRITE_CHUNK = 256 * 1024
# Statuses and error codes a heal's `timeout` stands for.
TIMEOUT_STATUSES = frozenset({408, 504})
TIMEOUT_CODES = frozenset({"timeout", "request_timeout", "timed_out"})


@dataclass(slots=True)
class Slice:
    """One child's input as written: its lines, bytes, embedding inputs and the models
    they name."""

    lines: int = 0
    bytes: int = 0
    inputs: int = 0
    models: set[str] = field(default_factory=set)


def _inputs(line: dict[str, Any]) -> int:
    """Embedding inputs of one request line (0 for other endpoints)."""
    if line.get("url") != "/v1/embeddings":
        return 0
    given = line.get("body", {}).get("input")
    return len(given) if isinstance(given, list) and given and not isinstance(given[0], int) else 1


class _Buffered:
    """A blob writer fed line by line, written in WRITE_CHUNK pieces."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        self.bytes = 0
        self._buf = bytearray()

    async def add(self, line: bytes) -> None:
        self.bytes += len(line)
        self._buf += line
        if len(self._buf) >= WRITE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if self._buf:
            await self.writer.write(bytes(self._buf))
            self._buf.clear()


def children_for(lines: int, size: int, max_lines: int, max_bytes: int) -> int:
    """How many children a file needs at least (each under both caps)."""
    return max(1, math.ceil(lines / max_lines), math.ceil(size / max_bytes))


def _parse(raw: bytes) -> dict[str, Any]:
    obj = orjson.loads(raw)
    return obj if isinstance(obj, dict) else {}


def _custom_id(line: dict[str, Any]) -> str | None:
    value = line.get("custom_id")
    return value if isinstance(value, str) else None


async def split_input(
    opener: Opener,
    writer_for: Callable[[int], BlobWriter],
    *,
    lines: int,
    size: int,
    max_lines: int,
    max_bytes: int,
    max_inputs: int = EMBEDDING_INPUTS,
) -> list[Slice]:
    """Cut a validated input file into children of about equal lines, each under the
    caps (lines, bytes, embedding inputs); `writer_for(i)` gives child i's blob,
    committed here (aborted on failure)."""
    share = math.ceil(lines / children_for(lines, size, max_lines, max_bytes))
    share = min(share, max_lines)
    slices: list[Slice] = []
    open_writers: list[_Buffered] = []
    current: _Buffered | None = None
    try:
        async with opener() as chunks:
            async for raw in iter_lines(chunks):
                line = raw + b"\n"
                parsed = _parse(raw)
                inputs = _inputs(parsed)
                piece = slices[-1] if slices else None
                if (
                    piece is None
                    or piece.lines >= share
                    or piece.bytes + len(line) > max_bytes
                    or piece.inputs + inputs > max_inputs
                ):
                    if current is not None:
                        await current.flush()
                    current = _Buffered(writer_for(len(slices)))
                    open_writers.append(current)
                    piece = Slice()
                    slices.append(piece)
                assert current is not None
                await current.add(line)
                piece.lines += 1
                piece.bytes += len(line)
                piece.inputs += inputs
                model = parsed.get("body", {}).get("model")
                if isinstance(model, str):
                    piece.models.add(model)
        if current is not None:
            await current.flush()
        for buffered in open_writers:
            await buffered.writer.commit()
    except BaseException:
        for buffered in open_writers:
            await buffered.writer.abort()
        raise
    return slices


async def select_lines(opener: Opener, wanted: Collection[str], writer: BlobWriter) -> Slice:
    """Copy the input lines whose custom_id is in `wanted` to `writer` (a heal's input)."""
    out = _Buffered(writer)
    piece = Slice()
    try:
        async with opener() as chunks:
            async for raw in iter_lines(chunks):
                line = _parse(raw)
                if _custom_id(line) in wanted:
                    await out.add(raw + b"\n")
                    piece.lines += 1
                    piece.bytes += len(raw) + 1
                    model = line.get("body", {}).get("model")
                    if isinstance(model, str):
                        piece.models.add(model)
        await out.flush()
        await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    return piece


def heal_matches(line: dict[str, Any], codes: Iterable[int | str]) -> bool:
    """Whether a result line failed in a way a heal re-runs: its `response.status_code`,
    or its `error.code`, is one of `codes` (`timeout` also stands for 408, 504 and the
    usual timeout codes)."""
    wanted = set(codes)
    response = line.get("response")
    if isinstance(response, dict):
        status = response.get("status_code")
        return status in wanted or ("timeout" in wanted and status in TIMEOUT_STATUSES)
    error = line.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code in wanted or ("timeout" in wanted and code in TIMEOUT_CODES)


@dataclass(slots=True)
class ChildFiles:
    """What merging (or examining) one child reads."""

    input: Opener
    output: Opener | None
    errors: Opener | None
    # (code, message) for an input line the child has no result for (it never ran).
    missing: tuple[str, str]


async def _lines(opener: Opener | None) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
    if opener is None:
        return
    async with opener() as chunks:
        async for raw in iter_lines(chunks):
            yield raw, _parse(raw)


async def custom_ids(opener: Opener | None) -> set[str]:
    """The custom_ids of a file's lines."""
    return {cid async for _, line in _lines(opener) if (cid := _custom_id(line)) is not None}


async def failed_ids(child: ChildFiles, codes: Iterable[int | str]) -> tuple[set[str], int]:
    """(custom_ids a heal would re-run, how many lines failed in all) for an ended child."""
    done = await custom_ids(child.output)
    wanted: set[str] = set()
    failed = 0
    async for _, line in _lines(child.errors):
        cid = _custom_id(line)
        if cid is None or cid in done:
            continue
        done.add(cid)
        failed += 1
        if heal_matches(line, codes):
            wanted.add(cid)
    never_ran = {"response": None, "error": {"code": child.missing[0]}}
    heal_missing = heal_matches(never_ran, codes)
    async for _, line in _lines(child.input):
        cid = _custom_id(line)
        if cid is not None and cid not in done:
            failed += 1
            if heal_missing:
                wanted.add(cid)
    return wanted, failed


@dataclass(slots=True)
class Merger:
    """Writes the merged output and error files, one child after another.

    Each custom_id ends up exactly once: a child's successes are copied; its failures
    are copied unless they were re-run (`rerun`), whose result the heal child gives; an
    input line with no result at all gets an error line of the child's `missing` code.
    """

    output: BlobWriter
    errors: BlobWriter
    batch_id: str
    error_file_id: str
    completed: int = 0
    failed: int = 0
    expired: int = 0
    _out: _Buffered = field(init=False)
    _err: _Buffered = field(init=False)

    def __post_init__(self) -> None:
        self._out = _Buffered(self.output)
        self._err = _Buffered(self.errors)

    async def add(self, child: ChildFiles, rerun: Collection[str] = ()) -> int:
        """Merge one child; returns how many of its lines succeeded."""
        seen: set[str] = set()
        succeeded = 0
        async for raw, line in _lines(child.output):
            cid = _custom_id(line)
            if cid is None or cid in seen:
                continue  # a provider's duplicate line is not a second result
            seen.add(cid)
            await self._out.add(raw + b"\n")
            succeeded += 1
        async for raw, line in _lines(child.errors):
            cid = _custom_id(line)
            if cid is None or cid in seen or cid in rerun:
                continue
            seen.add(cid)
            await self._error(raw + b"\n", line)
        async for _, line in _lines(child.input):
            cid = _custom_id(line)
            if cid is None or cid in seen or cid in rerun:
                continue
            seen.add(cid)
            line_id, _ = line_ids(self.batch_id, self.error_file_id, self.failed)
            made = error_line(line_id, cid, child.missing)
            await self._error(dumps(made), made)
        self.completed += succeeded
        return succeeded

    async def _error(self, data: bytes, line: dict[str, Any]) -> None:
        await self._err.add(data)
        self.failed += 1
        error = line.get("error")
        if isinstance(error, dict) and error.get("code") == "batch_expired":
            self.expired += 1

    @property
    def output_bytes(self) -> int:
        return self._out.bytes

    @property
    def error_bytes(self) -> int:
        return self._err.bytes

    async def finish(self) -> None:
        """Flush both files (the caller commits or aborts the writers)."""
        await self._out.flush()
        await self._err.flush()
