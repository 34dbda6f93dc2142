"""The public objects, exactly as OpenAI's API shapes them (unset fields are null)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.store.base import FileRecord, Page
from providers.base import ALL_ENDPOINTS, TIMESTAMP_FIELDS

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class CreateBatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1, max_length=256)
    endpoint: Literal[ALL_ENDPOINTS]  # type: ignore[valid-type]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
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
