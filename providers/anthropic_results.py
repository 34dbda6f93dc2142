"""Anthropic Message Batches -> OpenAI vocabulary (wire reference §5): the batch status,
its times and counts, and each result line as an OpenAI output/error line.

Pure functions, no I/O, so each mapping is unit-tested without a server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from providers.base import RequestCounts
from providers.results import (
    CANCELLED,
    EXPIRED,
    error_body,
    error_line,
    response_line,
    stable_hex,
)

__all__ = [
    "MessageBatch",
    "message_to_completion",
    "parse_message_batch",
    "result_to_line",
    "rfc3339_seconds",
]

Json = dict[str, Any]

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic error type -> the HTTP status the synchronous API would have answered.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_COUNT_NAMES = ("processing", "succeeded", "errored", "canceled", "expired")
_FRACTION = re.compile(r"(\.\d{6})\d+")


def rfc3339_seconds(value: Any) -> int | None:
    """RFC 3339 timestamp -> Unix seconds; None for null or unparseable values."""
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION.sub(r"\1", value.replace("Z", "+00:00").replace("z", "+00:00"))
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class MessageBatch:
    """The fields of an Anthropic MessageBatch the gateway acts on, already converted."""

    id: str
    processing_status: str
    counts: dict[str, int]
    created_at: int | None
    expires_at: int | None
    ended_at: int | None
    cancel_initiated_at: int | None
    results_url: str | None

    @property
    def ended(self) -> bool:
        return self.processing_status == "ended"

    def status(self) -> str:
        """OpenAI status. An ended batch is final only once its results are files, which
        the adapter decides; this is the status it will end in."""
        if self.processing_status == "canceling":
            return "cancelling"
        if not self.ended:
            return "in_progress"
        if self.cancel_initiated_at is not None:
            return "cancelled"
        if (
            self.counts["expired"] > 0
            and self.ended_at is not None
            and self.expires_at is not None
            and self.ended_at >= self.expires_at
        ):
            return "expired"
        return "completed"

    def request_counts(self) -> RequestCounts:
        c = self.counts
        failed = c["errored"] + c["canceled"] + c["expired"]
        return RequestCounts(sum(c.values()), c["succeeded"], failed)


def parse_message_batch(data: Mapping[str, Any]) -> MessageBatch:
    """Raises ValueError for a body that is not a MessageBatch."""
    batch_id, status = data.get("id"), data.get("processing_status")
    if not isinstance(batch_id, str) or status not in ("in_progress", "canceling", "ended"):
        raise ValueError("not a message batch")
    raw = data.get("request_counts")
    raw = raw if isinstance(raw, Mapping) else {}
    counts = {}
    for name in _COUNT_NAMES:
        value = raw.get(name)
        counts[name] = value if isinstance(value, int) and value >= 0 else 0
    url = data.get("results_url")
    return MessageBatch(
        id=batch_id,
        processing_status=status,
        counts=counts,
        created_at=rfc3339_seconds(data.get("created_at")),
        expires_at=rfc3339_seconds(data.get("expires_at")),
        ended_at=rfc3339_seconds(data.get("ended_at")),
        cancel_initiated_at=rfc3339_seconds(data.get("cancel_initiated_at")),
        results_url=url if isinstance(url, str) and url else None,
    )


def _usage(usage: Any) -> Json:
    usage = usage if isinstance(usage, Mapping) else {}

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) else 0

    cached = count("cache_read_input_tokens")
    prompt = count("input_tokens") + count("cache_creation_input_tokens") + cached
    completion = count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def message_to_completion(
    message: Mapping[str, Any], *, created: int, completion_id: str = "chatcmpl-"
) -> Json:
    """An Anthropic Message as the `chat.completion` the OpenAI endpoint would return."""
    texts: list[str] = []
    calls: list[Json] = []
    for block in message.get("content") or ():
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    reply: Json = {"role": "assistant", "content": "".join(texts) if texts else None}
    reply["refusal"] = None
    if calls:
        reply["tool_calls"] = calls
    finish = _FINISH.get(str(message.get("stop_reason")), "stop")
    choice = {"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}
    return {
        "id": completion_id,  # the gateway's: Anthropic's message id stays with Anthropic
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [choice],
        "usage": _usage(message.get("usage")),
    }


def result_to_line(
    result: Mapping[str, Any], *, custom_id: Any, seed: str, created: int
) -> tuple[Json, bool]:
    """One results_url line as an OpenAI batch line; True when it belongs in the output
    file. `seed` (the batch id) makes the line's ids stable across rewrites."""
    line_id = f"batch_req_{stable_hex(seed, custom_id, 'line')}"
    request_id = f"req_{stable_hex(seed, custom_id, 'req')}"
    outcome = result.get("result")
    outcome = outcome if isinstance(outcome, Mapping) else {}
    kind = outcome.get("type")
    if kind == "succeeded" and isinstance(outcome.get("message"), Mapping):
        completion_id = f"chatcmpl-{stable_hex(seed, custom_id, 'completion')}"
        body = message_to_completion(
            outcome["message"], created=created, completion_id=completion_id
        )
        return response_line(line_id, custom_id, 200, request_id, body), True
    if kind == "errored":
        wrapper = outcome.get("error")
        wrapper = wrapper if isinstance(wrapper, Mapping) else {}
        nested = wrapper.get("error")
        inner: Mapping[str, Any] = nested if isinstance(nested, Mapping) else wrapper
        error_type = str(inner.get("type") or "api_error")
        message = str(inner.get("message") or error_type)
        status = ERROR_STATUS.get(error_type, 500)
        body = error_body(message, error_type)
        return response_line(line_id, custom_id, status, request_id, body), False
    if kind == "canceled":
        return error_line(line_id, custom_id, CANCELLED), False
    if kind == "expired":
        return error_line(line_id, custom_id, EXPIRED), False
    unknown = ("upstream_error", f"The provider reported an unknown result type {kind!r}.")
    return error_line(line_id, custom_id, unknown), False
