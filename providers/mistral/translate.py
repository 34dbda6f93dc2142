"""Mistral batch jobs and result lines <-> OpenAI's: pure functions, no I/O (see the
package docstring for the shapes and where they come from)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.base import (
    GATEWAY_TAG,
    TERMINAL_STATUSES,
    ProviderError,
    RequestCounts,
    UpstreamBatch,
)
from providers.http import iter_lines
from providers.lines import LineError
from providers.results import error_body, error_line, response_line

JOBS = "/batch/jobs"
TIMEOUT_HOURS = 24
PAGE_SIZE = 100
OUTPUT_PREFIX, ERRORS_PREFIX = "mistral-output-", "mistral-errors-"
PART, PARTS = "gateway_part", "gateway_parts"

# OpenAI batch endpoint -> Mistral's `endpoint` (same request bodies, less `model`).
ENDPOINTS = {
    "/v1/chat/completions": "/v1/chat/completions",
    "/v1/embeddings": "/v1/embeddings",
    "/v1/moderations": "/v1/moderations",
}
STATUSES = {
    "QUEUED": "validating",
    "RUNNING": "in_progress",
    "SUCCESS": "completed",
    "FAILED": "failed",
    "TIMEOUT_EXCEEDED": "expired",
    "CANCELLATION_REQUESTED": "cancelling",
    "CANCELLED": "cancelled",
}
# Mistral's ids are UUIDs; none may reach a client.

Json = dict[str, Any]
Scrub = Callable[[str], str]


def to_mistral_line(line: Mapping[str, Any]) -> Json:
    """An OpenAI input line -> Mistral's `{custom_id, body}`, the model left to the job."""
    body = line.get("body")
    if not isinstance(body, Mapping) or not isinstance(body.get("model"), str):
        raise LineError("body.model is required: Mistral runs each batch job on one model")
    return {
        "custom_id": line.get("custom_id"),
        "body": {k: v for k, v in body.items() if k != "model"},
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(slots=True)
class Job:
    """A Mistral batch job in the gateway's vocabulary."""

    id: str
    status: str
    model: str | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    created_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    output_file: str | None = None
    error_file: str | None = None
    errors: list[Json] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        tag = self.metadata.get(GATEWAY_TAG)
        return tag if isinstance(tag, str) else None

    def part(self) -> tuple[int, int] | None:
        """(index, count) of a split create's part; None for a whole batch."""
        index, count = self.metadata.get(PART), self.metadata.get(PARTS)
        if (
            isinstance(index, str)
            and isinstance(count, str)
            and index.isdigit()
            and count.isdigit()
        ):
            return int(index), int(count)
        return None


def parse_job(data: Mapping[str, Any]) -> Job:
    """Mistral's BatchJob JSON -> Job; an unknown status or missing id is unreadable."""
    job_id, status = data.get("id"), STATUSES.get(str(data.get("status")))
    if not isinstance(job_id, str) or not job_id or status is None:
        raise ProviderError("retryable", "the provider sent an unreadable batch job")
    errors = [
        {"code": None, "message": e["message"], "param": None, "line": None}
        for e in data.get("errors") or ()
        if isinstance(e, Mapping) and isinstance(e.get("message"), str)
    ]
    metadata = data.get("metadata")
    model = data.get("model")

    def file_id(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None

    return Job(
        id=job_id,
        status=status,
        model=model if isinstance(model, str) else None,
        total=_int(data.get("total_requests")) or 0,
        succeeded=_int(data.get("succeeded_requests")) or 0,
        failed=_int(data.get("failed_requests")) or 0,
        created_at=_int(data.get("created_at")),
        started_at=_int(data.get("started_at")),
        completed_at=_int(data.get("completed_at")),
        output_file=file_id("output_file"),
        error_file=file_id("error_file"),
        errors=errors,
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
    )


def _timestamps(
    status: str, created: int | None, started: int | None, ended: int | None
) -> dict[str, int | None]:
    stamps: dict[str, int | None] = {
        "expires_at": created + TIMEOUT_HOURS * 3600 if created else None,
        "in_progress_at": started,
    }
    if status in TERMINAL_STATUSES:
        stamps[f"{status}_at"] = ended
    return stamps


def job_to_batch(job: Job) -> UpstreamBatch:
    ended = job.status in TERMINAL_STATUSES
    return UpstreamBatch(
        id=job.id,
        status=job.status,
        output_file_id=job.output_file if ended else None,
        error_file_id=job.error_file if ended else None,
        model=job.model,
        errors=job.errors or None,
        request_counts=RequestCounts(job.total, job.succeeded, job.failed),
        timestamps=_timestamps(job.status, job.created_at, job.started_at, job.completed_at),
    )


def group_status(statuses: list[str]) -> str:
    """One status for a split batch's jobs (the rule is in the module docstring)."""
    for waiting in ("cancelling", "in_progress", "validating"):
        if waiting in statuses:
            return waiting
    for ended in ("cancelled", "expired", "completed"):
        if ended in statuses:
            return ended
    return "failed"


def group_batch(group_id: str, jobs: list[Job]) -> UpstreamBatch:
    """A split batch's jobs as one batch, its result files composite ids."""
    status = group_status([job.status for job in jobs])
    ended = status in TERMINAL_STATUSES
    starts = [job.started_at for job in jobs if job.started_at]
    ends = [job.completed_at for job in jobs if job.completed_at]
    created = min((job.created_at for job in jobs if job.created_at), default=None)
    errors = [error for job in jobs for error in job.errors]
    return UpstreamBatch(
        id=group_id,
        status=status,
        output_file_id=OUTPUT_PREFIX + group_id
        if ended and any(j.output_file for j in jobs)
        else None,
        error_file_id=ERRORS_PREFIX + group_id
        if ended and any(j.error_file for j in jobs)
        else None,
        model=None,
        errors=errors or None,
        request_counts=RequestCounts(
            sum(j.total for j in jobs), sum(j.succeeded for j in jobs), sum(j.failed for j in jobs)
        ),
        timestamps=_timestamps(
            status, created, min(starts, default=None), max(ends, default=None) if ended else None
        ),
    )


def _openai_error(body: Any, status: int, scrub: Scrub = str) -> Json:
    """A Mistral error body as OpenAI's error envelope."""
    message, type_, code = None, "invalid_request_error" if status < 500 else "server_error", None
    if isinstance(body, Mapping):
        detail = body.get("detail")
        raw = body.get("message")
        if isinstance(raw, str):
            message = raw
        elif raw is not None:
            message = orjson.dumps(raw).decode()
        elif isinstance(detail, list):
            message = "; ".join(str(d.get("msg")) for d in detail if isinstance(d, Mapping))
        elif isinstance(detail, str):
            message = detail
        if isinstance(body.get("type"), str):
            type_ = body["type"]
        code = body.get("code") if isinstance(body.get("code"), str) else None
    elif isinstance(body, str) and body:
        message = body
    return error_body(scrub(message) if message else f"HTTP {status}", type_, None, code)


def to_openai_line(line: Mapping[str, Any], scrub: Scrub = str) -> Json:
    """A Mistral result line -> OpenAI's `{id, custom_id, response, error}`; `scrub`
    cleans the messages Mistral wrote (its job and file ids must not reach a client)."""
    raw_id = line.get("id")
    line_id = raw_id if isinstance(raw_id, str) else ""
    custom_id = line.get("custom_id")
    response = line.get("response")
    if isinstance(response, Mapping) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        if not 200 <= status < 300 and not (isinstance(body, Mapping) and "error" in body):
            body = _openai_error(body, status, scrub)
        request_id = response.get("request_id")
        return response_line(
            line_id, custom_id, status, request_id if isinstance(request_id, str) else "", body
        )
    error = line.get("error")
    if isinstance(error, Mapping):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        message = scrub(message) if message else code or "The request failed."
        return error_line(line_id, custom_id, (code, message))
    if isinstance(error, str) and error:
        return error_line(line_id, custom_id, (None, scrub(error)))
    return error_line(
        line_id, custom_id, (None, "The provider sent neither a response nor an error.")
    )


async def _translated(chunks: AsyncIterator[bytes], scrub: Scrub) -> AsyncIterator[bytes]:
    async for raw in iter_lines(chunks):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield raw + b"\n"  # the gateway's normalizer reports it
            continue
        line = to_openai_line(line, scrub) if isinstance(line, dict) else line
        yield orjson.dumps(line) + b"\n"


def _only(model: str) -> Any:
    """The split upload's transform: this model's lines, the others dropped."""

    def transform(line: dict[str, Any]) -> Json | None:
        body = line.get("body")
        return (
            to_mistral_line(line) if isinstance(body, dict) and body.get("model") == model else None
        )

    return transform
