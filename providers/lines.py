"""Input files rewritten line by line while they stream to a provider.

Providers whose batch input is not OpenAI's line shape (Azure's deployment names,
Mistral's and Together's `{custom_id, body}`, Gemini's `{key, request}`) translate each
line on the way out, so a 200 MB file is never held whole. A line that cannot be
translated stops the upload with a `bad_request` naming its line number, which the
client gets as a 400 from its create.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from providers.base import InputFile, ProviderError

__all__ = ["LineError", "input_lines", "rewritten", "rewritten_size"]

# What a translation makes of one parsed input line: a JSON-able object, or None to drop it.
Transform = Callable[[dict[str, Any]], Any]
# Lines are gathered into chunks of about this size before they are sent.
CHUNK = 256 * 1024


class LineError(ValueError):
    """A line the provider cannot run; the message says why (not which line: the caller
    adds that)."""


async def input_lines(file: InputFile) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, parsed line) for each non-blank line of a validated input
    file; numbers count blank lines too, as the gateway's upload validation does."""
    pending, number = b"", 0
    async with file.open() as chunks:
        async for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                number += 1
                if raw.strip():
                    yield number, orjson.loads(raw)
    if pending.strip():
        yield number + 1, orjson.loads(pending)


def _refused(number: int, exc: LineError) -> ProviderError:
    return ProviderError("bad_request", f"Line {number}: {exc}", code="invalid_line")


async def rewritten(file: InputFile, transform: Transform) -> AsyncIterator[bytes]:
    """The file as JSONL chunks of `transform(line)`; raises ProviderError naming the line
    that `transform` refused (with LineError)."""
    out = bytearray()
    async for number, line in input_lines(file):
        try:
            translated = transform(line)
        except LineError as exc:
            raise _refused(number, exc) from None
        if translated is None:
            continue
        out += orjson.dumps(translated) + b"\n"
        if len(out) >= CHUNK:
            yield bytes(out)
            out.clear()
    if out:
        yield bytes(out)


async def rewritten_size(file: InputFile, transform: Transform) -> int:
    """The byte size `rewritten` will produce, for uploads that must announce it first."""
    size = 0
    async for chunk in rewritten(file, transform):
        size += len(chunk)
    return size
