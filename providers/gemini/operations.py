"""Gemini batch Operations read into what the adapter needs.

Get, cancel and list answer Operations whose `metadata` is the batch (the official SDK
reads `metadata.state`, `metadata.output.responsesFile`, `metadata.displayName`); the
REST reference's bare batch resource is read too. States come as `BATCH_STATE_*`; the
SDK's `JOB_STATE_*` names (`_transformers.t_job_state`) are accepted as well. int64
fields (`batchStats`) arrive as strings, times as RFC 3339 with up to 9 fractional digits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from providers.base import ProviderError

__all__ = ["BATCH_NAME", "FILE_NAME", "GeminiBatch", "int64", "list_page", "parse_batch", "rfc3339"]

BATCH_NAME = re.compile(r"batches/[A-Za-z0-9_-]{1,128}")
FILE_NAME = re.compile(r"files/[A-Za-z0-9_-]{1,128}")
# State name -> OpenAI status; BATCH_STATE_* (REST) and JOB_STATE_* (the SDK's names).
_STATUSES = {
    "UNSPECIFIED": "validating",
    "QUEUED": "validating",
    "PENDING": "validating",
    "RUNNING": "in_progress",
    "UPDATING": "in_progress",
    "PAUSED": "in_progress",
    "CANCELLING": "cancelling",
    "SUCCEEDED": "completed",
    "PARTIALLY_SUCCEEDED": "completed",
    "FAILED": "failed",
    "CANCELLED": "cancelled",
    "EXPIRED": "expired",
}
_FRACTION = re.compile(r"(\.\d{6})\d+")


def rfc3339(value: Any) -> int | None:
    """A Timestamp (RFC 3339, up to 9 fractional digits) as Unix seconds."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return int(datetime.fromisoformat(_FRACTION.sub(r"\1", value)).timestamp())
    except ValueError:
        return None


def int64(value: Any) -> int | None:
    """An int64 field: proto JSON sends it as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class GeminiBatch:
    """What the adapter reads from a batch Operation (or a bare batch resource)."""

    name: str
    display_name: str | None
    status: str
    model: str | None
    created: int | None
    ended: int | None
    responses_file: str | None
    counts: tuple[int | None, int | None, int | None]  # total, succeeded, failed
    error: Mapping[str, Any] | None


def parse_batch(data: Mapping[str, Any]) -> GeminiBatch:
    meta = data.get("metadata")
    batch: Mapping[str, Any] = meta if isinstance(meta, Mapping) else data
    name = data.get("name") or batch.get("name")
    if not isinstance(name, str) or not BATCH_NAME.fullmatch(name):
        raise ProviderError("retryable", "the provider sent a batch without a name")
    state = batch.get("state")
    key = state.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_") if state else None
    status = _STATUSES.get(key or "UNSPECIFIED")
    if status is None:
        raise ProviderError("retryable", "the provider sent a batch with an unknown state")
    output = batch.get("output")
    response = data.get("response")
    responses_file = (output if isinstance(output, Mapping) else {}).get("responsesFile") or (
        response if isinstance(response, Mapping) else {}
    ).get("responsesFile")
    stats = batch.get("batchStats")
    stats = stats if isinstance(stats, Mapping) else {}
    model, display = batch.get("model"), batch.get("displayName")
    error = data.get("error")
    return GeminiBatch(
        name=name,
        display_name=display if isinstance(display, str) else None,
        status=status,
        model=model.removeprefix("models/") if isinstance(model, str) and model else None,
        created=rfc3339(batch.get("createTime")),
        ended=rfc3339(batch.get("endTime")),
        responses_file=responses_file
        if isinstance(responses_file, str) and FILE_NAME.fullmatch(responses_file)
        else None,
        counts=(
            int64(stats.get("requestCount")),
            int64(stats.get("successfulRequestCount")),
            int64(stats.get("failedRequestCount")),
        ),
        error=error if isinstance(error, Mapping) else None,
    )


def list_page(data: Mapping[str, Any], key: str) -> tuple[list[Any], str | None]:
    items, token = data.get(key, []), data.get("nextPageToken")
    if not isinstance(items, list):
        raise ProviderError("retryable", "the provider sent an unreadable list")
    return items, token if isinstance(token, str) and token else None
