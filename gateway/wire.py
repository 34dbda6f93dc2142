"""The public objects, exactly as OpenAI's API shapes them (unset fields are null).

The request models validate what clients send. The response models describe what
the handlers send (built as plain dicts by the functions below, for speed): they
feed /openapi.json, and the tests check real answers against them. Every limit a
client can run into is a named constant here, used by the models and the handlers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from gateway.errors import InvalidRequest
from gateway.store.base import FileRecord, Page
from providers.base import ALL_ENDPOINTS, BATCH_STATUSES, TIMESTAMP_FIELDS

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# expires_after / output_expires_after: 1 hour to 30 days, as in OpenAI.
MIN_EXPIRES_SECONDS = 3600
MAX_EXPIRES_SECONDS = 2_592_000
MAX_ID_LENGTH = 256  # input_file_id, and the `after` cursor of the lists
DEFAULT_BATCHES_PAGE = 20
MAX_BATCHES_PAGE = 100
MAX_FILES_PAGE = 10_000  # also the default: OpenAI lists up to 10,000 files at once
MAX_FORM_PARTS = 8  # parts of an upload's multipart form

UploadPurpose = Literal["batch"]
FilePurpose = Literal["batch", "batch_output"]
ListOrder = Literal["asc", "desc"]
UPLOAD_PURPOSES: tuple[str, ...] = get_args(UploadPurpose)
FILE_PURPOSES: tuple[str, ...] = get_args(FilePurpose)
LIST_ORDERS: tuple[str, ...] = get_args(ListOrder)

Metadata = Annotated[
    dict[str, str],
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_METADATA_PAIRS,
            "propertyNames": {"maxLength": MAX_METADATA_KEY},
            "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
        }
    ),
]


def invalid_request(exc: ValidationError, *, form_field: str | None = None) -> InvalidRequest:
    """OpenAI's 400 for the first thing pydantic refused, naming the parameter; the
    parts of a form field are named as the form sends them (`expires_after[seconds]`)."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    if form_field is not None:
        param = f"{form_field}[{param}]" if param else form_field
    if err["type"] == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if err["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    message = err["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param)


# Requests


class ExpiresAfter(BaseModel):
    """When a file expires: `seconds` after its creation."""

    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRES_SECONDS, le=MAX_EXPIRES_SECONDS)


class CreateBatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    endpoint: Literal[ALL_ENDPOINTS]  # type: ignore[valid-type]
    completion_window: Literal["24h"]
    metadata: Metadata | None = None
    output_expires_after: ExpiresAfter | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs are allowed")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY:
                raise ValueError(f"keys must be at most {MAX_METADATA_KEY} characters")
            if len(item) > MAX_METADATA_VALUE:
                raise ValueError(f"values must be at most {MAX_METADATA_VALUE} characters")
        return value


# Describes the form for /openapi.json only: the handler streams it, part by part.
class CreateFileRequest(BaseModel):
    """The upload form. `expires_after` travels as the fields expires_after[anchor] and
    expires_after[seconds], as OpenAI's SDKs send it."""

    model_config = ConfigDict(json_schema_extra={"maxProperties": MAX_FORM_PARTS})
    file: bytes = Field(description="Batch input JSONL: one request per line.")
    purpose: UploadPurpose
    expires_after: ExpiresAfter | None = None


# Responses: every field is always sent, null where unset.


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorObject(_Answer):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Answer):
    error: ErrorObject


class OpenAIFile(_Answer):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None
    status_details: str | None


class DeleteFileResponse(_Answer):
    id: str
    object: Literal["file"]
    deleted: bool


class BatchError(_Answer):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(_Answer):
    object: Literal["list"]
    data: list[BatchError]


class BatchRequestCounts(_Answer):
    total: int
    completed: int
    failed: int


class InputTokensDetails(_Answer):
    cached_tokens: int


class OutputTokensDetails(_Answer):
    reasoning_tokens: int


class BatchUsage(_Answer):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


# Its timestamps are providers.base.TIMESTAMP_FIELDS (a test keeps the two equal).
class Batch(_Answer):
    id: str
    object: Literal["batch"]
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal[BATCH_STATUSES]  # type: ignore[valid-type]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts | None
    usage: BatchUsage | None
    metadata: dict[str, str] | None


class _List(_Answer):
    object: Literal["list"]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ListFilesResponse(_List):
    data: list[OpenAIFile]


class ListBatchesResponse(_List):
    data: list[Batch]


class UsageTotals(_Answer):
    batches: int
    lines_succeeded: int
    lines_failed: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    # Null when no row in the group had a known price.
    cost_usd: float | None
    # Tokens of rows recorded without a price (their cost is not in cost_usd).
    unpriced_tokens: int


class UsageGroup(UsageTotals):
    model_config = ConfigDict(extra="allow")


class UsageReport(_Answer):
    object: Literal["gateway.usage"]
    group_by: Literal["tenant", "provider", "model", "day"]
    start: int
    end: int
    data: list[UsageGroup]
    total: UsageTotals


class Liveness(_Answer):
    status: Literal["ok"]
    version: str
    pid: int


class Readiness(_Answer):
    status: Literal["ok"]
    providers: list[str]
    pid: int


# The objects the handlers send.


def new_batch_object(
    batch_id: str,
    body: CreateBatchBody,
    created_at: int,
    model: str | None,
    total: int,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.endpoint,
        "model": model,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created_at,
    }
    obj.update(dict.fromkeys(TIMESTAMP_FIELDS))
    obj["expires_at"] = created_at + 86_400
    obj["request_counts"] = {"total": total, "completed": 0, "failed": 0}
    obj["usage"] = None
    obj["metadata"] = body.metadata
    return obj


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": record.expires_at,
        "status_details": None,
    }


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def file_list(page: Page[FileRecord]) -> dict[str, Any]:
    return list_object([file_object(r) for r in page.data], page.has_more)
