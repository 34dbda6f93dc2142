"""The one route table: `add_routes` registers it and /openapi.json describes it.

An entry names its handler, its request and response models (gateway.wire) and
what the document adds (summary, error statuses, parameters, links), so a route
or a model field exists in one place and the document cannot drift from the app.
Path parameters come from the path; 401/403/429/500 and the bearer scheme from
whether the path is public (gateway.auth.PUBLIC_PATHS).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gateway import idempotency, metrics, wire
from gateway.api import admin, batches, console, files, usage

Schema = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Raw:
    """A response body that is not a JSON wire model."""

    media_type: str
    schema: Schema
    description: str


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    response: type[BaseModel] | Raw
    request: type[BaseModel] | None = None
    form: bool = False  # the request model travels as multipart/form-data, not JSON
    errors: tuple[int, ...] = ()
    parameters: tuple[Schema, ...] = ()
    links: Mapping[str, Schema] = field(default_factory=dict)


def query(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _enum(values: tuple[str, ...]) -> Schema:
    return {"type": "string", "enum": list(values)}


def _link(operation: str, **parameters: str) -> Schema:
    return {"operationId": operation, "parameters": parameters}


# Stripe's semantics: the same key and request answer the first answer again.
IDEMPOTENCY_KEY: Schema = {
    "name": idempotency.HEADER,
    "in": "header",
    "required": False,
    "description": "Retry safely: the same key and request (per key of yours, kept 24 h) get "
    "the first answer again; another request under the key is refused (400), and one "
    "arriving while the first runs gets 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
}
# Unix seconds or a UTC date.
MOMENT = r"^(?:[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2})$"
AFTER = query("after", {"type": "string", "minLength": 1, "maxLength": wire.MAX_ID_LENGTH})

SECONDS = r"^[0-9]{1,12}$"
_STRING_OR_NULL: Schema = {"type": ["string", "null"]}
_NUMBER_OR_NULL: Schema = {"type": ["number", "null"]}
ADMIN_BATCH: Schema = {
    "type": "object",
    "required": ["batch", "tenant", "provider", "upstream_id", "rule"],
    "properties": {
        "batch": {"type": "object"},
        "tenant": {"type": "string"},
        "provider": {"type": "string"},
        "upstream_id": _STRING_OR_NULL,
        "rule": _STRING_OR_NULL,
    },
}
ADMIN_LIST: Schema = {
    "type": "object",
    "required": ["object", "data", "first_id", "last_id", "has_more"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": ADMIN_BATCH},
        "first_id": _STRING_OR_NULL,
        "last_id": _STRING_OR_NULL,
        "has_more": {"type": "boolean"},
    },
}
ADMIN_DETAIL: Schema = {
    **ADMIN_BATCH,
    "required": [*ADMIN_BATCH["required"], "history", "attempts", "children"],
    "properties": {
        **ADMIN_BATCH["properties"],
        "history": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"status": {"type": "string"}, "at": {"type": "integer"}},
            },
        },
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "provider": {"type": "string"},
                    "at": {"type": "integer"},
                    "outcome": {
                        "type": "string",
                        "enum": ["created", "failed", "unknown", "found"],
                    },
                    "error": _STRING_OR_NULL,
                },
            },
        },
        "children": {"type": "array", "items": ADMIN_BATCH},
    },
}
ADMIN_PROVIDERS: Schema = {
    "type": "object",
    "required": ["object", "data", "routes"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "enabled": {"type": "boolean"},
                    "breaker": {
                        "type": ["string", "null"],
                        "enum": ["closed", "open", "half_open", None],
                    },
                    "calls": {"type": "integer"},
                    "error_rate": _NUMBER_OR_NULL,
                    "latency_p50_ms": _NUMBER_OR_NULL,
                    "latency_p95_ms": _NUMBER_OR_NULL,
                    "active_batches": {"type": "integer"},
                },
            },
        },
        "routes": {"type": "array", "items": {"type": "string"}},
    },
}

# The links let a client (and schemathesis) go upload -> create batch -> retrieve / cancel.
FILE_LINKS = {
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
BATCH_LINKS = {
    "RetrieveBatch": _link("retrieveBatch", batch_id="$response.body#/id"),
    "CancelBatch": _link("cancelBatch", batch_id="$response.body#/id"),
    "RetrieveInputFile": _link("retrieveFile", file_id="$response.body#/input_file_id"),
}


@functools.cache
def routes() -> tuple[Route, ...]:
    """Every route the app serves, in the document's order."""
    # gateway.app defines the process-level handlers and imports this module, so it
    # is imported here, once it has loaded.
    from gateway import app as process

    return (
        Route(
            "POST",
            "/v1/files",
            files.upload,
            "createFile",
            "Upload a batch input file (validated while it streams)",
            wire.OpenAIFile,
            request=wire.CreateFileRequest,
            form=True,
            errors=(400, 408, 409, 413, 415),
            parameters=(IDEMPOTENCY_KEY,),
            links=FILE_LINKS,
        ),
        Route(
            "GET",
            "/v1/files",
            files.list_files,
            "listFiles",
            "List your files",
            wire.ListFilesResponse,
            errors=(400,),
            parameters=(
                query("purpose", _enum(wire.FILE_PURPOSES)),
                AFTER,
                query("limit", {"type": "integer", "minimum": 1, "maximum": wire.MAX_FILES_PAGE}),
                query("order", _enum(wire.LIST_ORDERS)),
            ),
        ),
        Route(
            "GET",
            "/v1/files/{file_id}",
            files.retrieve,
            "retrieveFile",
            "Retrieve a file",
            wire.OpenAIFile,
            errors=(404,),
        ),
        Route(
            "DELETE",
            "/v1/files/{file_id}",
            files.delete,
            "deleteFile",
            "Delete an input file (not an output file, not one a running batch reads)",
            wire.DeleteFileResponse,
            errors=(400, 404, 409),
        ),
        Route(
            "GET",
            "/v1/files/{file_id}/content",
            files.content,
            "downloadFile",
            "The file's bytes, streamed",
            Raw("application/octet-stream", {"type": "string", "format": "binary"}, "The file"),
            errors=(400, 404, 502, 503),
        ),
        Route(
            "POST",
            "/v1/batches",
            batches.create,
            "createBatch",
            "Create a batch from an uploaded input file",
            wire.Batch,
            request=wire.CreateBatchBody,
            errors=(400, 404, 408, 409, 413, 415, 502, 503),
            parameters=(IDEMPOTENCY_KEY,),
            links=BATCH_LINKS,
        ),
        Route(
            "GET",
            "/v1/batches",
            batches.list_batches,
            "listBatches",
            "List your batches, newest first",
            wire.ListBatchesResponse,
            errors=(400,),
            parameters=(
                AFTER,
                query("limit", {"type": "integer", "minimum": 1, "maximum": wire.MAX_BATCHES_PAGE}),
            ),
        ),
        Route(
            "GET",
            "/v1/batches/{batch_id}",
            batches.retrieve,
            "retrieveBatch",
            f"Retrieve a batch (stale with {batches.STALE_HEADER} when the provider is down)",
            wire.Batch,
            errors=(404, 502, 503),
            links=BATCH_LINKS,
        ),
        Route(
            "POST",
            "/v1/batches/{batch_id}/cancel",
            batches.cancel,
            "cancelBatch",
            "Cancel a batch",
            wire.Batch,
            errors=(400, 404, 502, 503),
            links=BATCH_LINKS,
        ),
        Route(
            "GET",
            "/v1/gateway/usage",
            usage.usage_report,
            "usageReport",
            "Recorded usage and cost, totalled by tenant, provider, model or day (extension)",
            wire.UsageReport,
            errors=(400,),
            parameters=(
                query("group_by", _enum(usage.GROUP_BY)),
                query("start", {"type": "string", "pattern": MOMENT}),
                query("end", {"type": "string", "pattern": MOMENT}),
            ),
        ),
        Route(
            "GET",
            "/v1/gateway/admin/batches",
            admin.list_batches,
            "adminListBatches",
            "Every tenant's batches, newest first, with provider and routing (admin key)",
            Raw("application/json", ADMIN_LIST, "The batches"),
            errors=(400,),
            parameters=(
                query("tenant", {"type": "string"}),
                query("provider", {"type": "string"}),
                query("status", {"type": "string"}),
                query("created_after", {"type": "string", "pattern": SECONDS}),
                query("created_before", {"type": "string", "pattern": SECONDS}),
                query("metadata_key", {"type": "string"}),
                query("metadata_value", {"type": "string"}),
                AFTER,
                query("limit", {"type": "integer", "minimum": 1, "maximum": admin.MAX_PAGE}),
            ),
        ),
        Route(
            "GET",
            "/v1/gateway/admin/batches/{batch_id}",
            admin.retrieve_batch,
            "adminRetrieveBatch",
            "A batch with its status history, create attempts and children (admin key)",
            Raw("application/json", ADMIN_DETAIL, "The batch"),
            errors=(404,),
        ),
        Route(
            "POST",
            "/v1/gateway/admin/batches/{batch_id}/refresh",
            admin.refresh_batch,
            "adminRefreshBatch",
            "Ask the provider about a batch now (admin key)",
            Raw("application/json", ADMIN_DETAIL, "The batch"),
            errors=(404, 502, 503),
        ),
        Route(
            "GET",
            "/v1/gateway/admin/providers",
            admin.list_providers,
            "adminProviders",
            "Providers' breakers, recent calls and active batches, and the routes (admin key)",
            Raw("application/json", ADMIN_PROVIDERS, "The providers"),
        ),
        Route(
            "GET",
            "/console",
            console.asset,
            "console",
            "The operator console, a web page (no key: it holds no data)",
            Raw("text/html", {"type": "string"}, "The page"),
        ),
        Route(
            "GET",
            "/console/console.js",
            console.asset,
            "consoleScript",
            "The console's script",
            Raw("text/javascript", {"type": "string"}, "The script"),
        ),
        Route(
            "GET",
            "/console/console.css",
            console.asset,
            "consoleStyle",
            "The console's style sheet",
            Raw("text/css", {"type": "string"}, "The style sheet"),
        ),
        Route("GET", "/health/live", process.live, "live", "Liveness", wire.Liveness),
        Route("GET", "/health/ready", process.ready, "ready", "Readiness", wire.Readiness),
        Route(
            "GET",
            "/openapi.json",
            process.openapi_json,
            "openapi",
            "This document",
            Raw("application/json", {"type": "object"}, "OK"),
        ),
        Route(
            "GET",
            "/metrics",
            metrics.metrics_handler,
            "metrics",
            "Prometheus metrics",
            Raw("text/plain", {"type": "string"}, "Prometheus text exposition format"),
        ),
    )


def add_routes(app: web.Application) -> None:
    for route in routes():
        if route.method == "GET":  # with HEAD, which answers what a GET would
            app.router.add_get(route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path, route.handler)
