"""Vertex AI BatchPredictionJob resources read into what the adapter needs.

Shapes from the REST reference (projects.locations.batchPredictionJobs, v1): `name` is
`projects/{project}/locations/{location}/batchPredictionJobs/{id}` with a numeric id,
`state` a `JOB_STATE_*`, times RFC 3339, `completionStats` int64 counts as strings,
`outputInfo.gcsOutputDirectory` the folder the job wrote (`<prefix>/prediction-model-<time>`)
and `error` a google.rpc.Status. Only the numeric id leaves this module: the resource name
holds the project.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from providers.base import TERMINAL_STATUSES, ProviderError, RequestCounts, UpstreamBatch
from providers.gemini.operations import int64, rfc3339

__all__ = [
    "GATEWAY_LABEL",
    "JOB_ID",
    "VertexJob",
    "decode_tag",
    "encode_tag",
    "job_view",
    "parse_job",
    "since_filter",
]

JOB_ID = re.compile(r"\d{1,30}")
_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/batchPredictionJobs/(\d{1,30})")
# The job label that carries the gateway's batch id. Label values allow only lowercase
# letters, digits, `_` and `-` (63 at most), and gateway ids are mixed case, so the id
# goes as lowercase base32; `displayName` carries it as is.
GATEWAY_LABEL = "batch_gateway"

# JOB_STATE_* -> OpenAI status. PENDING/QUEUED: Vertex has not started the job (it checks
# the input first), as `validating` says; PAUSED and UPDATING are a running job's.
_STATUSES = {
    "UNSPECIFIED": "validating",
    "QUEUED": "validating",
    "PENDING": "validating",
    "RUNNING": "in_progress",
    "PAUSED": "in_progress",
    "UPDATING": "in_progress",
    "SUCCEEDED": "completed",
    "PARTIALLY_SUCCEEDED": "completed",
    "FAILED": "failed",
    "CANCELLING": "cancelling",
    "CANCELLED": "cancelled",
    "EXPIRED": "expired",
}


def encode_tag(gateway_id: str) -> str:
    return base64.b32encode(gateway_id.encode()).decode().rstrip("=").lower()


def decode_tag(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    padded = value.upper() + "=" * (-len(value) % 8)
    try:
        return base64.b32decode(padded).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def since_filter(since: int) -> str:
    """A list filter for the jobs created at `since` or later."""
    moment = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'create_time>="{moment}"'


@dataclass(frozen=True, slots=True)
class VertexJob:
    id: str
    display_name: str | None
    tag: str | None  # the gateway id the job's label carries
    status: str
    model: str | None
    created: int | None
    started: int | None
    ended: int | None
    output_dir: str | None
    input_uris: tuple[str, ...]
    counts: tuple[int, int, int] | None  # succeeded, failed, incomplete
    error: Mapping[str, Any] | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def tagged(self) -> str | None:
        """The gateway id of a job the gateway made: display name and label agree."""
        if self.display_name and self.display_name == self.tag:
            return self.display_name
        return None


def parse_job(data: Mapping[str, Any]) -> VertexJob:
    name = data.get("name")
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ProviderError("retryable", "the provider sent a job without a name")
    state = data.get("state")
    key = state.removeprefix("JOB_STATE_") if isinstance(state, str) else "UNSPECIFIED"
    status = _STATUSES.get(key)
    if status is None:
        raise ProviderError("retryable", "the provider sent a job with an unknown state")
    labels = data.get("labels")
    labels = labels if isinstance(labels, Mapping) else {}
    stats = data.get("completionStats")
    counts = None
    if isinstance(stats, Mapping):
        counts = (
            int64(stats.get("successfulCount")) or 0,
            int64(stats.get("failedCount")) or 0,
            int64(stats.get("incompleteCount")) or 0,
        )
    output = data.get("outputInfo")
    output_dir = output.get("gcsOutputDirectory") if isinstance(output, Mapping) else None
    source = (data.get("inputConfig") or {}).get("gcsSource") or {}
    uris = source.get("uris") if isinstance(source, Mapping) else None
    display, model, error = data.get("displayName"), data.get("model"), data.get("error")
    return VertexJob(
        id=match.group(1),
        display_name=display if isinstance(display, str) else None,
        tag=decode_tag(labels.get(GATEWAY_LABEL)),
        status=status,
        model=model if isinstance(model, str) and model else None,
        created=rfc3339(data.get("createTime")),
        started=rfc3339(data.get("startTime")),
        ended=rfc3339(data.get("endTime")),
        output_dir=output_dir if isinstance(output_dir, str) and output_dir else None,
        input_uris=tuple(u for u in uris or () if isinstance(u, str)),
        counts=counts,
        error=error if isinstance(error, Mapping) and error else None,
    )


def job_view(
    job: VertexJob, model: str | None, lines: int | None, scrub: Callable[[str], str]
) -> UpstreamBatch:
    """The job in OpenAI's vocabulary. Counts come from `completionStats` (the line count
    until Vertex reports any); an ended job's results are `<job id>#output` and
    `<job id>#errors`, each shown when it has lines (or the counts are unknown), the errors
    also for the requests a cancelled or expired job never ran."""
    counts = None
    if job.counts is not None:
        succeeded, failed, incomplete = job.counts
        counts = RequestCounts(succeeded + failed + incomplete, succeeded, failed)
    elif lines:
        counts = RequestCounts(lines, 0, 0)
    timestamps: dict[str, int | None] = {}
    if job.status != "validating":
        timestamps["in_progress_at"] = job.started
    view = UpstreamBatch(
        id=job.id, status=job.status, model=model, request_counts=counts, timestamps=timestamps
    )
    if not job.terminal:
        return view
    timestamps[f"{job.status}_at"] = job.ended
    if job.error is not None and job.status == "failed":
        message = job.error.get("message")
        text = scrub(message) if isinstance(message, str) else "The batch failed."
        code = job.error.get("status")
        view.errors = [
            {"code": code if isinstance(code, str) else None, "message": text}
            | {"param": None, "line": None}
        ]
    if job.output_dir is None:
        return view
    succeeded, failed, incomplete = job.counts or (1, 1, 1)
    if succeeded:
        view.output_file_id = f"{job.id}#output"
    if failed or (incomplete and job.status in ("cancelled", "expired")):
        view.error_file_id = f"{job.id}#errors"
    return view
