"""How many input tokens a batch will use, before it runs: what a budget counts as committed.

With `tiktoken` installed and the model's encoding loadable (cached in `TIKTOKEN_CACHE_DIR`,
or downloadable), the prompt texts of a sample of the input (its first SAMPLE_BYTES of whole
lines) are tokenized and scaled to the file's size; otherwise, about four bytes a token of
the whole file (the JSON around the prompts counts too, so this errs high). An encoding that
cannot be loaded is not tried again by this process.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.store import FileRecord
from providers.context import BlobStore

log = logging.getLogger("gateway.estimate")

SAMPLE_BYTES = 256 * 1024
LOAD_SECONDS = 10.0
_encodings: dict[str, Any] = {}  # model -> tiktoken Encoding, or None once it failed


def _load(model: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(tiktoken.encoding_name_for_model(model))


async def encoding(model: str) -> Any:
    """The model's tiktoken encoding, or None (not installed, unknown model, not loadable)."""
    if model not in _encodings:
        try:
            async with asyncio.timeout(LOAD_SECONDS):
                _encodings[model] = await asyncio.to_thread(_load, model)
        except Exception as exc:  # ImportError, KeyError (unknown model), network, timeout
            log.info(
                "no tokenizer for %s (%s): estimating 4 bytes a token",
                model[:100],
                type(exc).__name__,
            )
            _encodings[model] = None
    return _encodings[model]


def prompt_texts(body: Any) -> Iterator[str]:
    """The texts a request sends: messages' contents, `input`, `prompt`."""
    if not isinstance(body, dict):
        return
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        yield from _strings(content)
    for key in ("input", "prompt", "instructions"):
        yield from _strings(body.get(key))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item
            elif isinstance(item, dict):
                yield from _strings(item.get("text") or item.get("content"))


async def input_tokens(blobs: BlobStore, file: FileRecord) -> int:
    """The file's estimated prompt tokens."""
    fallback = file.bytes // 4
    encodings = [e for m in file.models if (e := await encoding(m)) is not None]
    if not encodings or file.blob is None or file.bytes <= 0:
        return fallback
    sample = bytearray()
    async with blobs.open(file.blob) as chunks:
        async for chunk in chunks:
            sample += chunk
            if len(sample) >= SAMPLE_BYTES:
                break
    whole = sample if len(sample) >= file.bytes else sample[: sample.rfind(b"\n") + 1]
    if not whole:
        return fallback
    tokens = 0
    for raw in bytes(whole).splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        for text in prompt_texts(line.get("body") if isinstance(line, dict) else None):
            tokens += max(len(e.encode_ordinary(text)) for e in encodings)
    return math.ceil(tokens * file.bytes / len(whole))
