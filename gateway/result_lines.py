"""A remote provider's result file rewritten into OpenAI batch output lines, as a stream.

Providers write their own ids into every line (`id`, `response.request_id`), and some a
shape of their own: llama-stack sends `response.body` as a JSON-encoded string and failed
requests as bare `{id, custom_id, error: {type, message}}` lines. A client must see one
shape and only the gateway's ids, so every line is rebuilt with the adapters' one line
builder (`providers.results`), its ids derived from the gateway's batch id, the gateway's
file id and the line's position: the same file always gives the same bytes, and nothing
of the provider's ids is in them or can be derived back from them. The model's `body` is
kept as it came (key order and values), only decoded when it came as a JSON string.

Bytes in, bytes out: only the line being read is held, never the file.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from typing import Any

import orjson

from providers.results import dumps, error_line, response_line, stable_hex

__all__ = [
    "INVALID_LINE",
    "MAX_LINE_BYTES",
    "ResultLines",
    "line_ids",
    "normalize",
    "normalize_line",
]

INVALID_LINE = "invalid_provider_line"
# A line longer than this is not held: it becomes an `invalid_provider_line` error line.
# Far above any real answer (an embeddings line of 2048 x 3072 floats is ~130 MB).
MAX_LINE_BYTES = 256 * 1024 * 1024
# A provider id shorter than this is not searched for in messages: it could match words.
MIN_SWAPPED_ID = 6
_BOM = b"\xef\xbb\xbf"
# 19 digits in a row may be an integer orjson cannot hold exactly (it reads it as a
# float). Found by mapping digits to "0" and the rest to " ": ten times a regex's speed.
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def line_ids(batch_id: str, file_id: str, index: int) -> tuple[str, str]:
    """(line id, request id) of the file's `index`-th line: gateway inputs only, stable."""
    return (
        f"batch_req_{stable_hex(batch_id, file_id, index, 'line')}",
        f"req_{stable_hex(batch_id, file_id, index, 'req')}",
    )


def _loads(raw: bytes | str) -> Any:
    """orjson, else the standard library (NaN; integers beyond 64 bits, which orjson would
    turn into floats); None if neither can."""
    data = raw if isinstance(raw, bytes) else raw.encode(errors="surrogatepass")
    if _LONG_RUN not in data.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _dump(line: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError: an integer beyond 64 bits, a lone surrogate
        pass
    try:
        return dumps(line)
    except UnicodeEncodeError:  # a lone surrogate (a "\ud800" escape): kept escaped
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def _status(value: Any) -> int | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return value if isinstance(value, str) else str(value)


def _body(body: Any) -> Any:
    """The body as the endpoint answered it; a JSON-encoded object (llama-stack) decoded."""
    if isinstance(body, str):
        decoded = _loads(body)
        if isinstance(decoded, dict | list):
            return decoded
    return body


def _swapped(text: str, swap: Mapping[str, str]) -> str:
    for provider_id in sorted(swap, key=len, reverse=True):
        if provider_id in text:
            text = text.replace(provider_id, swap[provider_id])
    return text


def normalize_line(
    raw: bytes, line_id: str, request_id: str, swap: Mapping[str, str] | None = None
) -> bytes:
    """One provider line as one OpenAI line (newline-terminated), never an exception.

    `swap` maps provider ids (its batch and file ids) to the gateway's, for error
    messages that mention them; the line's own provider ids are swapped too.
    """
    line = _loads(raw)
    if not isinstance(line, dict):
        message = "The provider sent a result line that is not a JSON object."
        return _dump(error_line(line_id, None, (INVALID_LINE, message)))
    custom_id = line.get("custom_id")
    custom_id = custom_id if isinstance(custom_id, str) else None
    response = line.get("response")
    if isinstance(response, dict):
        status = _status(response.get("status_code"))
        if status is not None:
            body = _body(response.get("body"))
            return _dump(response_line(line_id, custom_id, status, request_id, body))
    error = line.get("error")
    if isinstance(error, dict):
        code = _text(error.get("code")) or _text(error.get("type"))
        message = _text(error.get("message")) or code or "The provider gave no reason."
        own = {**(swap or {}), **_own_ids(line, line_id, request_id)}
        return _dump(error_line(line_id, custom_id, (code, _swapped(message, own))))
    message = "The provider sent a result line with neither a response nor an error."
    return _dump(error_line(line_id, custom_id, (INVALID_LINE, message)))


def _own_ids(line: dict[str, Any], line_id: str, request_id: str) -> dict[str, str]:
    """The line's provider ids, each mapped to the gateway id that replaces it."""
    own: dict[str, str] = {}
    response = line.get("response")
    pairs = [(line.get("id"), line_id)]
    if isinstance(response, dict):
        pairs.append((response.get("request_id"), request_id))
    for provider_id, gateway_id in pairs:
        if isinstance(provider_id, str) and len(provider_id) >= MIN_SWAPPED_ID:
            own[provider_id] = gateway_id
    return own


class ResultLines:
    """Splits a result file into lines and rewrites each: `feed` chunks, then `finish`.

    Blank lines are dropped; a last line without a newline still counts; a line over
    `max_line_bytes` is dropped unread and reported as an `invalid_provider_line`.
    """

    def __init__(
        self,
        batch_id: str,
        file_id: str,
        swap: Mapping[str, str] | None = None,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.batch_id = batch_id
        self.file_id = file_id
        self.swap = {k: v for k, v in (swap or {}).items() if k and len(k) >= MIN_SWAPPED_ID}
        self.max_line_bytes = max_line_bytes
        self.lines = 0
        self._pending = bytearray()
        self._skipping = False  # inside a line that was too long: drop up to its newline

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """The rewritten lines that `chunk` completes (b"" if none)."""
        data = bytes(chunk)
        out: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._line_end(data, start, end, out)
            start = end + 1
        if start < len(data) and not self._skipping:
            if len(self._pending) + len(data) - start > self.max_line_bytes:
                self._pending.clear()
                self._skipping = True
                out.append(self._too_long())
            else:
                self._pending += data[start:]
        return b"".join(out)

    def finish(self) -> bytes:
        """The last line, if the file did not end with a newline."""
        if self._skipping:
            self._skipping = False
            return b""
        raw = bytes(self._pending)
        self._pending.clear()
        return self._rewrite(raw)

    def _line_end(self, data: bytes, start: int, end: int, out: list[bytes]) -> None:
        if self._skipping:
            self._skipping = False
            return
        if self._pending:
            if len(self._pending) + end - start > self.max_line_bytes:
                self._pending.clear()
                out.append(self._too_long())
                return
            self._pending += data[start:end]
            raw = bytes(self._pending)
            self._pending.clear()
        elif end - start > self.max_line_bytes:
            out.append(self._too_long())
            return
        else:
            raw = data[start:end]
        if rewritten := self._rewrite(raw):
            out.append(rewritten)

    def _next_ids(self) -> tuple[str, str]:
        ids = line_ids(self.batch_id, self.file_id, self.lines)
        self.lines += 1
        return ids

    def _rewrite(self, raw: bytes) -> bytes:
        if self.lines == 0 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        raw = raw.strip()
        if not raw:
            return b""
        return normalize_line(raw, *self._next_ids(), self.swap)

    def _too_long(self) -> bytes:
        line_id, _ = self._next_ids()
        message = f"The provider sent a result line longer than {self.max_line_bytes} bytes."
        return _dump(error_line(line_id, None, (INVALID_LINE, message)))


async def normalize(
    chunks: AsyncIterable[bytes | bytearray | memoryview],
    batch_id: str,
    file_id: str,
    swap: Mapping[str, str] | None = None,
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> AsyncGenerator[bytes, None]:
    """A provider's result file as OpenAI lines, chunk by chunk (see the module docstring)."""
    lines = ResultLines(batch_id, file_id, swap, max_line_bytes=max_line_bytes)
    async for chunk in chunks:
        if out := lines.feed(chunk):
            yield out
    if out := lines.finish():
        yield out
