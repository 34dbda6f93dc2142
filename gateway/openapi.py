"""The gateway's OpenAPI 3.1 document, served at /openapi.json.

It describes exactly the routes `create_app` registers (a test keeps the two in
sync) with OpenAI's shapes, except that unset optional fields are declared
nullable, because the live API (and this gateway) sends `null` for them. The
links let schemathesis chain upload -> create batch -> retrieve / cancel.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.wire import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from providers.base import ALL_ENDPOINTS, BATCH_STATUSES, TIMESTAMP_FIELDS

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    if "type" in schema and "$ref" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], *, extra: bool = True) -> Schema:
    """An object whose every listed property is always present (null where unset)."""
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
        "additionalProperties": extra,
    }


_INT = {"type": "integer"}
_CURSOR = {"type": "string", "minLength": 1, "maxLength": 256}
_STR = {"type": "string"}
_EXPIRES_AFTER = {
    "type": "object",
    "required": ["anchor", "seconds"],
    "additionalProperties": False,
    "properties": {
        "anchor": {"type": "string", "enum": ["created_at"]},
        "seconds": {"type": "integer", "minimum": 3600, "maximum": 2_592_000},
    },
}
_METADATA = {
    "type": "object",
    "maxProperties": MAX_METADATA_PAIRS,
    "propertyNames": {"maxLength": MAX_METADATA_KEY},
    "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
}

SCHEMAS: dict[str, Schema] = {
    "ErrorResponse": _object(
        {
            "error": _object(
                {
                    "message": _STR,
                    "type": _STR,
                    "param": _nullable(_STR),
                    "code": _nullable(_STR),
                },
                extra=False,
            )
        },
        extra=False,
    ),
    "OpenAIFile": _object(
        {
            "id": _STR,
            "object": {"type": "string", "enum": ["file"]},
            "bytes": _INT,
            "created_at": _INT,
            "filename": _STR,
            "purpose": {"type": "string", "enum": ["batch", "batch_output"]},
            "status": {"type": "string", "enum": ["uploaded", "processed", "error"]},
            "expires_at": _nullable(_INT),
            "status_details": _nullable(_STR),
        }
    ),
    "ListFilesResponse": _object(
        {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("OpenAIFile")},
            "first_id": _nullable(_STR),
            "last_id": _nullable(_STR),
            "has_more": {"type": "boolean"},
        }
    ),
    "DeleteFileResponse": _object(
        {
            "id": _STR,
            "object": {"type": "string", "enum": ["file"]},
            "deleted": {"type": "boolean"},
        }
    ),
    "BatchError": {
        "type": "object",
        "properties": {
            "code": _nullable(_STR),
            "message": _nullable(_STR),
            "param": _nullable(_STR),
            "line": _nullable(_INT),
        },
    },
    "Batch": _object(
        {
            "id": _STR,
            "object": {"type": "string", "enum": ["batch"]},
            "endpoint": _STR,
            "model": _nullable(_STR),
            "errors": _nullable(
                {
                    "type": "object",
                    "properties": {
                        "object": _STR,
                        "data": {"type": "array", "items": _ref("BatchError")},
                    },
                }
            ),
            "input_file_id": _STR,
            "completion_window": _STR,
            "status": {"type": "string", "enum": list(BATCH_STATUSES)},
            "output_file_id": _nullable(_STR),
            "error_file_id": _nullable(_STR),
            "created_at": _INT,
            **{name: _nullable(_INT) for name in TIMESTAMP_FIELDS},
            "request_counts": _nullable(
                _object({"total": _INT, "completed": _INT, "failed": _INT})
            ),
            "usage": _nullable({"type": "object"}),
            "metadata": _nullable({"type": "object", "additionalProperties": _STR}),
        }
    ),
    "ListBatchesResponse": _object(
        {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Batch")},
            "first_id": _nullable(_STR),
            "last_id": _nullable(_STR),
            "has_more": {"type": "boolean"},
        }
    ),
    "CreateBatchRequest": {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "additionalProperties": False,
        "properties": {
            "input_file_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "endpoint": {"type": "string", "enum": list(ALL_ENDPOINTS)},
            "completion_window": {"type": "string", "enum": ["24h"]},
            "metadata": _nullable(_METADATA),
            "output_expires_after": _nullable(_EXPIRES_AFTER),
        },
    },
    "CreateFileRequest": {
        "type": "object",
        "required": ["file", "purpose"],
        "maxProperties": 8,
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "Batch input JSONL: one request per line.",
            },
            "purpose": {"type": "string", "enum": ["batch"]},
            "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
            "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2_592_000},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": _STR,
            "version": _STR,
            "providers": {"type": "array"},
            "pid": {"type": "integer"},
        },
    },
}

_ERRORS = {
    400: "Invalid request",
    401: "Missing or unknown API key",
    403: "The key may not do this",
    404: "No such object (also for another tenant's ids)",
    408: "The request body stalled; the connection is closed",
    409: "Conflicts with the object's state",
    413: "The body is over the size limit",
    415: "Wrong Content-Type",
    429: "Rate limit or quota exceeded",
    500: "Internal error",
    502: "The upstream provider failed",
    503: "The upstream provider is unavailable",
}
_ALWAYS = (401, 403, 429, 500)


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok: Schema, *errors: int, links: dict[str, Schema] | None = None) -> Schema:
    responses: dict[str, Schema] = {"200": ok}
    if links:
        responses["200"] = {**ok, "links": links}
    for status in sorted({*errors, *_ALWAYS}):
        responses[str(status)] = _json(_ref("ErrorResponse"), _ERRORS[status])
        if status == 429:
            responses["429"]["headers"] = {
                "Retry-After": {"schema": _INT, "description": "Seconds to wait (rate limit)"}
            }
    return responses


def _path_id(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


def _query(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _link(operation: str, **parameters: str) -> Schema:
    return {"operationId": operation, "parameters": parameters}


_FILE_LINKS = {
    "RetrieveFile": _link("retrieveFile", file_id="$response.body#/id"),
    "DownloadFile": _link("downloadFile", file_id="$response.body#/id"),
    "DeleteFile": _link("deleteFile", file_id="$response.body#/id"),
    "CreateBatch": {
        "operationId": "createBatch",
        "requestBody": {
            "input_file_id": "$response.body#/id",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    },
}
_BATCH_LINKS = {
    "RetrieveBatch": _link("retrieveBatch", batch_id="$response.body#/id"),
    "CancelBatch": _link("cancelBatch", batch_id="$response.body#/id"),
    "RetrieveInputFile": _link("retrieveFile", file_id="$response.body#/input_file_id"),
}


# Stripe's semantics: the same key and request answer the first answer again.
_IDEMPOTENCY_KEY: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Retry safely: the same key and request (per key of yours, kept 24 h) get "
    "the first answer again; another request under the key is refused (400), and one "
    "arriving while the first runs gets 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def _operation(op_id: str, summary: str, responses: Schema, **extra: Any) -> Schema:
    return {"operationId": op_id, "summary": summary, "responses": responses, **extra}


def _paths() -> dict[str, Schema]:
    file_id, batch_id = [_path_id("file_id")], [_path_id("batch_id")]
    public: dict[str, Any] = {"security": []}
    return {
        "/v1/files": {
            "post": _operation(
                "createFile",
                "Upload a batch input file (validated while it streams)",
                _responses(_json(_ref("OpenAIFile")), 400, 408, 409, 413, 415, links=_FILE_LINKS),
                requestBody={
                    "required": True,
                    "content": {"multipart/form-data": {"schema": _ref("CreateFileRequest")}},
                },
                parameters=[_IDEMPOTENCY_KEY],
            ),
            "get": _operation(
                "listFiles",
                "List your files",
                _responses(_json(_ref("ListFilesResponse")), 400),
                parameters=[
                    _query("purpose", {"type": "string", "enum": ["batch", "batch_output"]}),
                    _query("after", _CURSOR),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}),
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}),
                ],
            ),
        },
        "/v1/files/{file_id}": {
            "parameters": file_id,
            "get": _operation(
                "retrieveFile", "Retrieve a file", _responses(_json(_ref("OpenAIFile")), 404)
            ),
            "delete": _operation(
                "deleteFile",
                "Delete an input file (not an output file, not one a running batch reads)",
                _responses(_json(_ref("DeleteFileResponse")), 400, 404, 409),
            ),
        },
        "/v1/files/{file_id}/content": {
            "parameters": file_id,
            "get": _operation(
                "downloadFile",
                "The file's bytes, streamed",
                _responses(
                    {
                        "description": "The raw file",
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    400,
                    404,
                    502,
                    503,
                ),
            ),
        },
        "/v1/batches": {
            "post": _operation(
                "createBatch",
                "Create a batch from an uploaded input file",
                _responses(
                    _json(_ref("Batch")),
                    *(400, 404, 408, 409, 413, 415, 502, 503),
                    links=_BATCH_LINKS,
                ),
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateBatchRequest")}},
                },
                parameters=[_IDEMPOTENCY_KEY],
            ),
            "get": _operation(
                "listBatches",
                "List your batches, newest first",
                _responses(_json(_ref("ListBatchesResponse")), 400),
                parameters=[
                    _query("after", _CURSOR),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                ],
            ),
        },
        "/v1/batches/{batch_id}": {
            "parameters": batch_id,
            "get": _operation(
                "retrieveBatch",
                "Retrieve a batch (stale with X-Gateway-Stale when the provider is down)",
                _responses(_json(_ref("Batch")), 404, 502, 503, links=_BATCH_LINKS),
            ),
        },
        "/v1/batches/{batch_id}/cancel": {
            "parameters": batch_id,
            "post": _operation(
                "cancelBatch",
                "Cancel a batch",
                _responses(_json(_ref("Batch")), 400, 404, 502, 503, links=_BATCH_LINKS),
            ),
        },
        "/health/live": {
            "get": _operation("live", "Liveness", {"200": _json(_ref("Health"))}, **public)
        },
        "/health/ready": {
            "get": _operation("ready", "Readiness", {"200": _json(_ref("Health"))}, **public)
        },
        "/openapi.json": {
            "get": _operation(
                "openapi", "This document", {"200": _json({"type": "object"})}, **public
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                **public,
            )
        },
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Batch Gateway",
            "version": __version__,
            "description": "OpenAI-compatible Files and Batches API in front of many providers.",
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
