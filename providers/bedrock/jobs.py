"""Bedrock model invocation jobs read into what the adapter needs (pure functions).

Statuses follow the API reference's `ModelInvocationJobStatus` and the user guide's
"Monitor batch inference jobs": Submitted and Validating come before the input is
accepted (OpenAI's `validating`); Scheduled means validated and queued, so it is
`in_progress` like InProgress; PartiallyCompleted ends with some records failed, which
OpenAI says as `completed` with an error file; Stopping/Stopped are the cancel; Expired
is a job that ran out of its timeoutDurationInHours.

Names: `clientRequestToken` and `jobName` both allow only letters, digits and hyphens,
so the gateway's `batch_<24>` becomes `batch-<24>` in both (and back, for lookups).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "Family",
    "Job",
    "gateway_tag",
    "job_id",
    "job_name",
    "manifest_counts",
    "model_family",
    "parse_job",
    "s3_location",
]

Family = Literal["anthropic", "converse", "titan-embed", "cohere-embed"]
FAMILIES: tuple[Family, ...] = ("anthropic", "converse", "titan-embed", "cohere-embed")
CHAT_FAMILIES = frozenset({"anthropic", "converse"})

_STATUSES = {
    "Submitted": "validating",
    "Validating": "validating",
    "Scheduled": "in_progress",
    "InProgress": "in_progress",
    "Completed": "completed",
    "PartiallyCompleted": "completed",
    "Failed": "failed",
    "Stopping": "cancelling",
    "Stopped": "cancelled",
    "Expired": "expired",
}
JOB_ID = re.compile(r"[a-z0-9]{12}")
_JOB_ARN = re.compile(
    r"arn:aws[A-Za-z-]*:bedrock:[a-z0-9-]+:\d{12}:model-invocation-job/([a-z0-9]{12})"
)
_TAG = re.compile(r"batch-([A-Za-z0-9]{24})")
_S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?")
# Cross-Region inference profiles put a geography before the vendor ("us.anthropic...").
_GEOGRAPHIES = frozenset({"us", "eu", "apac", "jp", "au", "ca", "us-gov", "global"})
# Chat models Bedrock runs through the Converse API (Nova, Llama and the other text
# models whose batch jobs take Converse records).
_CONVERSE_VENDORS = ("amazon.nova", "meta.llama", "mistral.", "deepseek.", "openai.", "qwen.")
BEDROCK_ID = re.compile(r"(?:[a-z-]+\.)?[a-z0-9-]+\.[A-Za-z0-9._:-]+")


def job_name(gateway_batch_id: str) -> str:
    """The jobName and clientRequestToken of a gateway batch: `batch_x` -> `batch-x`."""
    return gateway_batch_id.replace("_", "-")


def gateway_tag(name: Any) -> str | None:
    """The gateway batch id a jobName carries, if it is one of ours."""
    match = _TAG.fullmatch(name) if isinstance(name, str) else None
    return f"batch_{match.group(1)}" if match else None


def job_id(arn_or_id: Any) -> str | None:
    """The 12-character job id of a job ARN (or an id already)."""
    if not isinstance(arn_or_id, str):
        return None
    if JOB_ID.fullmatch(arn_or_id):
        return arn_or_id
    match = _JOB_ARN.fullmatch(arn_or_id)
    return match.group(1) if match else None


def s3_location(uri: Any) -> tuple[str, str] | None:
    """`s3://bucket/a/b/` -> ("bucket", "a/b"); None for anything else."""
    match = _S3_URI.fullmatch(uri) if isinstance(uri, str) else None
    if match is None:
        return None
    return match.group(1), (match.group(2) or "").strip("/")


def model_family(model_id: str) -> Family | None:
    """How a Bedrock model id (a foundation model, an inference profile id, or the ARN of
    either) takes its batch records; None when the id doesn't say (an application
    inference profile ARN: configure its family)."""
    base = model_id
    if base.startswith("arn:"):
        base = base.split(":", 5)[-1].partition("/")[2]
    vendor, _, rest = base.partition(".")
    if vendor in _GEOGRAPHIES and "." in rest:
        base = rest
    if base.startswith("anthropic.claude"):
        return "anthropic"
    if base.startswith("amazon.titan-embed"):
        return "titan-embed"
    if base.startswith("cohere.embed"):
        return "cohere-embed"
    if base.startswith(_CONVERSE_VENDORS) and "embed" not in base:
        return "converse"
    return None


def _time(value: Any) -> int | None:
    """A timestamp as botocore parses it (datetime), or ISO 8601 / epoch as sent."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value:
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class Job:
    """What the adapter reads from a GetModelInvocationJob answer or a list summary."""

    id: str
    name: str | None
    raw_status: str
    status: str
    message: str | None
    model_id: str | None
    input_uri: str | None
    output_uri: str | None
    submitted: int | None
    modified: int | None
    ended: int | None
    expires: int | None
    # total, processed, succeeded, failed: None where the job doesn't say (yet).
    counts: tuple[int | None, int | None, int | None, int | None]

    @property
    def tag(self) -> str | None:
        return gateway_tag(self.name)

    @property
    def partial(self) -> bool:
        return self.raw_status == "PartiallyCompleted"


def _s3_uri(config: Any, outer: str) -> str | None:
    section = config.get(outer) if isinstance(config, Mapping) else None
    uri = section.get("s3Uri") if isinstance(section, Mapping) else None
    return uri if isinstance(uri, str) else None


def parse_job(data: Mapping[str, Any]) -> Job | None:
    """None for an answer without a job ARN of the documented shape or with an unknown
    status (the caller treats it as a broken answer)."""
    ident = job_id(data.get("jobArn"))
    raw = data.get("status")
    if ident is None or not isinstance(raw, str) or raw not in _STATUSES:
        return None
    message, name, model = data.get("message"), data.get("jobName"), data.get("modelId")
    return Job(
        id=ident,
        name=name if isinstance(name, str) else None,
        raw_status=raw,
        status=_STATUSES[raw],
        message=message if isinstance(message, str) and message else None,
        model_id=model if isinstance(model, str) else None,
        input_uri=_s3_uri(data.get("inputDataConfig"), "s3InputDataConfig"),
        output_uri=_s3_uri(data.get("outputDataConfig"), "s3OutputDataConfig"),
        submitted=_time(data.get("submitTime")),
        modified=_time(data.get("lastModifiedTime")),
        ended=_time(data.get("endTime")),
        expires=_time(data.get("jobExpirationTime")),
        counts=(
            _count(data.get("totalRecordCount")),
            _count(data.get("processedRecordCount")),
            _count(data.get("successRecordCount")),
            _count(data.get("errorRecordCount")),
        ),
    )


def manifest_counts(data: Any) -> tuple[tuple[int | None, ...], tuple[int, int] | None]:
    """`manifest.json.out`: (total, processed, succeeded, failed) and (input, output)
    tokens when it names them."""
    data = data if isinstance(data, Mapping) else {}
    counts = tuple(
        _count(data.get(k))
        for k in ("totalRecordCount", "processedRecordCount", "successRecordCount")
    ) + (_count(data.get("errorRecordCount")),)
    tokens_in, tokens_out = (
        _count(data.get("inputTokenCount")),
        _count(data.get("outputTokenCount")),
    )
    tokens = (tokens_in, tokens_out) if tokens_in is not None and tokens_out is not None else None
    return counts, tokens
