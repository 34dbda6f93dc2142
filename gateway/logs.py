"""Logs on stderr, each line about a request carrying its request id.

JSON lines for machines by default; short text lines for a person when stderr is
a terminal (`logging.format` forces either). The request id lives in a ContextVar
set by the request-id middleware, so every log call made while handling a
request (service, providers, store) is tagged without passing it around.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Literal, TextIO

import orjson
from aiohttp import web

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# LogRecord attributes that are not "extra" fields given by the caller.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: a traceback can hold paths and secrets.
            line["error"] = record.exc_info[0].__name__
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """One short line for a person: local time, level, request id, message (+ duration).

    Like the JSON lines, an exception shows as its type only: a traceback can hold
    paths and secrets.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}", f"{record.levelname:<7}"]
        rid = getattr(record, "request_id", None)
        if rid:
            parts.append(f"[{rid}]")
        parts.append(record.getMessage())
        duration = getattr(record, "duration_ms", None)  # access lines
        if duration is not None:
            parts.append(f"{duration} ms")
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f"({record.exc_info[0].__name__})")
        return " ".join(parts)


LogFormat = Literal["json", "text"]


def choose_format(fmt: LogFormat | None, stream: TextIO) -> LogFormat:
    """`fmt` when set; else ("auto") text on a terminal, JSON lines anywhere else."""
    if fmt is not None:
        return fmt
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


def configure(
    level: str = "INFO", fmt: LogFormat | None = None, stream: TextIO | None = None
) -> None:
    """Send every record to `stream` (stderr) in the chosen format, with its request id."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    if choose_format(fmt, stream) == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def route_of(request: Any) -> str:
    """The route template (`/v1/batches/{batch_id}`), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"
