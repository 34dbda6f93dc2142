"""Streaming validation of batch input files.

Fed chunk by chunk while the upload is written to disk, so a 200 MB file is
checked without ever being held in memory, and the first bad line is reported
by its 1-based number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from providers.base import ALL_ENDPOINTS

_BLANK = frozenset(b" \t\r\n\x0b\x0c")


class JSONLError(Exception):
    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(f"Line {line}: {reason}" if line else reason)
        self.line = line
        self.reason = reason


class TooLarge(Exception):
    """The file is over the byte limit (the caller answers 413)."""


@dataclass(slots=True)
class Summary:
    line_count: int
    endpoint: str
    models: tuple[str, ...]


@dataclass(slots=True)
class JSONLValidator:
    max_bytes: int = 200 * 1024 * 1024
    max_lines: int = 50_000
    max_line_bytes: int = 50 * 1024 * 1024
    max_embedding_inputs: int = 50_000
    endpoints: tuple[str, ...] = ALL_ENDPOINTS
    _buffer: bytearray = field(default_factory=bytearray)
    _total: int = 0
    _lineno: int = 0
    _requests: int = 0
    _embedding_inputs: int = 0
    _endpoint: str | None = None
    _ids: set[str] = field(default_factory=set)
    _models: set[str] = field(default_factory=set)

    def feed(self, chunk: bytes) -> None:
        self._total += len(chunk)
        if self._total > self.max_bytes:
            raise TooLarge(f"The file is larger than the limit of {self.max_bytes} bytes.")
        end = chunk.find(b"\n")
        if end < 0:
            self._buffer += chunk
            self._check_line_size()
            return
        # Lines are handed to the parser as views into the chunk: no copy per line.
        view = memoryview(chunk)
        if self._buffer:
            self._buffer += view[:end]
            self._line(bytes(self._buffer))
            self._buffer.clear()
        else:
            self._line(view[:end])
        start = end + 1
        while (end := chunk.find(b"\n", start)) >= 0:
            self._line(view[start:end])
            start = end + 1
        self._buffer += view[start:]
        self._check_line_size()

    def finish(self) -> Summary:
        if self._buffer:
            self._line(bytes(self._buffer))
            self._buffer.clear()
        if self._requests == 0 or self._endpoint is None:
            raise JSONLError(None, "The file contains no requests.")
        return Summary(self._requests, self._endpoint, tuple(sorted(self._models)))

    def _check_line_size(self) -> None:
        if len(self._buffer) > self.max_line_bytes:
            raise JSONLError(
                self._lineno + 1,
                f"the line is longer than the limit of {self.max_line_bytes} bytes",
            )

    def _line(self, raw: bytes | memoryview) -> None:
        self._lineno += 1
        n = self._lineno
        if len(raw) > self.max_line_bytes:
            raise JSONLError(n, f"the line is longer than the limit of {self.max_line_bytes} bytes")
        # Blank lines are skipped; only a line that starts blank is copied to check the rest.
        if not raw or (raw[0] in _BLANK and not bytes(raw).strip()):
            return
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise JSONLError(n, "not valid JSON") from None
        if not isinstance(obj, dict):
            raise JSONLError(n, "each line must be a JSON object")
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise JSONLError(n, "'custom_id' is missing or not a non-empty string")
        if custom_id in self._ids:
            raise JSONLError(n, f"duplicate custom_id {custom_id[:64]!r}")
        if obj.get("method") != "POST":
            raise JSONLError(n, "'method' must be \"POST\"")
        url = obj.get("url")
        if url not in self.endpoints:
            raise JSONLError(n, f"'url' must be one of: {', '.join(self.endpoints)}")
        if self._endpoint is None:
            self._endpoint = url
        elif url != self._endpoint:
            raise JSONLError(n, f"'url' {url!r} differs from {self._endpoint!r} on the first line")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise JSONLError(n, "'body' must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise JSONLError(n, "'body.model' is missing or not a non-empty string")
        if body.get("stream"):
            raise JSONLError(n, "'body.stream' is not supported in batches")
        if url == "/v1/embeddings":
            inputs = body.get("input")
            self._embedding_inputs += len(inputs) if isinstance(inputs, list) else 1
            if self._embedding_inputs > self.max_embedding_inputs:
                raise JSONLError(
                    n, f"more than {self.max_embedding_inputs} embedding inputs in the file"
                )
        self._requests += 1
        if self._requests > self.max_lines:
            raise JSONLError(n, f"more than {self.max_lines} requests in the file")
        self._ids.add(custom_id)
        self._models.add(model)
