"""OpenAI batch output/error lines, for every adapter that writes result files itself.

Wire reference §2: a 2xx response goes to the output file; a non-2xx response goes to the
error file with the endpoint's error envelope as its body; a request that never ran goes to
the error file with `response: null` and an `error` code (`batch_cancelled`, `batch_expired`).
Ids are derived from stable inputs so that rewriting a file after a restart gives the same
bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers.base import ProviderError

if TYPE_CHECKING:
    from providers.context import StateStore

__all__ = [
    "CANCELLED",
    "VIEWS",
    "EXPIRED",
    "LineCounts",
    "UsageTally",
    "batch_usage",
    "dumps",
    "error_body",
    "error_line",
    "is_output",
    "response_line",
    "stable_hex",
    "shown_views",
    "results_view",
    "split_named",
    "split_view",
    "views_deleted",
]

Json = dict[str, Any]

# (code, message) for requests that never ran.
CANCELLED = ("batch_cancelled", "The batch was cancelled before this request ran.")
EXPIRED = ("batch_expired", "The batch's completion window ended before this request ran.")


# A provider that writes one results file (or folder) per batch is shown to the gateway as
# two files, `<name>#output` and `<name>#errors`, each streaming only its own lines.
VIEWS = ("output", "errors")


def split_view(upstream_file_id: str) -> tuple[str, str | None]:
    """`x` -> (x, None); `x#output` -> (x, "output"); an unknown view is not a file."""
    name, _, part = upstream_file_id.partition("#")
    if part and part not in VIEWS:
        raise ValueError(upstream_file_id)
    return name, part or None


def split_named(
    upstream_file_id: str, view_name: re.Pattern[str], file_name: re.Pattern[str]
) -> tuple[str, str | None]:
    """`split_view`, and the name checked against the shape of a results file (a view) or
    of an input file: anything else is a file the provider never had."""
    try:
        name, part = split_view(upstream_file_id)
    except ValueError:
        name, part = "", None
    if not (view_name if part is not None else file_name).fullmatch(name):
        raise ProviderError("not_found", "No such file at the provider.")
    return name, part


def results_view(
    upstream_file_id: str, view_name: re.Pattern[str], file_name: re.Pattern[str]
) -> tuple[str, str]:
    """`split_named` for a read: only a results view has bytes to give back (what was
    staged or uploaded is the provider's format, not the file the client sent)."""
    name, part = split_named(upstream_file_id, view_name, file_name)
    if part is None:
        raise ProviderError("not_found", "The provider keeps no readable copy of this file.")
    return name, part


def shown_views(output_file_id: str | None, error_file_id: str | None) -> list[str]:
    """The views a batch showed the gateway: only those will ever be deleted by it."""
    return [v for v, f in zip(VIEWS, (output_file_id, error_file_id), strict=True) if f]


async def views_deleted(
    state: StateStore, name: str, part: str, shown: Sequence[str] = VIEWS
) -> bool:
    """Note that the gateway deleted this view; True once every view it was shown is (then
    the provider's file goes)."""
    key = f"deleted:{name}"
    done = set((await state.load(key) or {}).get("parts", [])) | {part}
    if not done >= set(shown):
        await state.save(key, {"parts": sorted(done)})
        return False
    await state.delete(key)
    return True


def stable_hex(*parts: object) -> str:
    """24 hex chars from sha256 of the parts: the same line always gets the same ids."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:24]


def dumps(obj: Any) -> bytes:
    """One JSONL line: compact, UTF-8, newline-terminated."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> Json:
    """OpenAI's error envelope, as the body of a non-2xx per-line response."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def response_line(
    line_id: str, custom_id: Any, status_code: int, request_id: str, body: Any
) -> Json:
    """A request that got an HTTP answer (output file if 2xx, else error file)."""
    response = {"status_code": status_code, "request_id": request_id, "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def error_line(line_id: str, custom_id: Any, error: tuple[str | None, str]) -> Json:
    """A request that never produced an HTTP answer: `error` is (code, message); the
    code may be null, as in OpenAI's `BatchRequestOutput`."""
    code, message = error
    return {
        "id": line_id,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def is_output(line: Json) -> bool:
    """True when the line belongs in the output file rather than the error file."""
    response = line.get("response")
    return isinstance(response, dict) and 200 <= response.get("status_code", 0) < 300


def batch_usage(
    input_tokens: int, output_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> Json:
    """The Batch / Responses `usage` object."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _count(usage: dict[str, Any], *names: str) -> int:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


@dataclass(slots=True)
class UsageTally:
    """Sums the `usage` of successful response bodies into the batch's `usage`.

    Chat/completions/embeddings bodies say prompt/completion tokens, Responses bodies
    say input/output tokens; both count.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def add(self, body: Any) -> None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return
        self.input_tokens += _count(usage, "prompt_tokens", "input_tokens")
        self.output_tokens += _count(usage, "completion_tokens", "output_tokens")
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        if isinstance(details, dict):
            self.cached_tokens += _count(details, "cached_tokens")

    def usage(self) -> Json:
        return batch_usage(self.input_tokens, self.output_tokens, self.cached_tokens)


@dataclass(slots=True)
class LineCounts:
    """Result lines written so far: output lines, error lines, and the output's usage."""

    completed: int = 0
    failed: int = 0
    tally: UsageTally = field(default_factory=UsageTally)

    def count(self, line: Json) -> bool:
        """Count one result line; True when it belongs in the output file."""
        ok = is_output(line)
        if ok:
            self.completed += 1
            self.tally.add(line["response"].get("body"))
        else:
            self.failed += 1
        return ok

    def progress(self) -> Json:
        return {"completed": self.completed, "failed": self.failed, "usage": self.tally.usage()}
