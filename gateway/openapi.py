"""The gateway's OpenAPI 3.1 document, served at /openapi.json.

Generated: the paths from the route table (gateway.api.routes, which also registers
the routes) and the schemas from the wire models (gateway.wire), so a route or a
model field is written once. The shapes are OpenAI's, except that unset optional
fields are declared nullable, because the live API (and this gateway) sends `null`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import CoreSchema

from gateway import __version__
from gateway.api.routes import Raw, Route, routes
from gateway.auth import PUBLIC_PATHS
from gateway.wire import ErrorResponse

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"

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
_ALWAYS = (401, 403, 429, 500)  # any route behind the API key
_RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait (rate limit)"}
}


class _Untitled(GenerateJsonSchema):
    """Schemas without a title on every field (the name says it)."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


def _ref(model: type[BaseModel]) -> Schema:
    return {"$ref": REF.format(model=model.__name__)}


def _components(table: tuple[Route, ...]) -> dict[str, Schema]:
    """Every model the routes name, with the models they nest, by class name."""
    modes: dict[type[BaseModel], JsonSchemaMode] = {ErrorResponse: "serialization"}
    for route in table:
        if route.request is not None:
            modes[route.request] = "validation"
        if not isinstance(route.response, Raw):
            modes[route.response] = "serialization"
    _, defs = models_json_schema(list(modes.items()), ref_template=REF, schema_generator=_Untitled)
    schemas: dict[str, Schema] = defs["$defs"]
    for route in table:
        if route.form and route.request is not None:
            name = route.request.__name__
            schemas[name] = _form(schemas[name], schemas)
    return schemas


def _form(schema: Schema, schemas: dict[str, Schema]) -> Schema:
    """A multipart form: an object field travels as fields `name[key]` (OpenAI's way)."""
    properties: dict[str, Schema] = {}
    for name, prop in schema["properties"].items():
        refs = [s["$ref"] for s in [prop, *prop.get("anyOf", [])] if "$ref" in s]
        if not refs:
            properties[name] = prop
            continue
        nested = schemas[refs[0].rsplit("/", 1)[1]]
        properties |= {f"{name}[{key}]": sub for key, sub in nested["properties"].items()}
    return {**schema, "properties": properties}


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(route: Route) -> Schema:
    if isinstance(route.response, Raw):
        raw = route.response
        ok = {"description": raw.description, "content": {raw.media_type: {"schema": raw.schema}}}
    else:
        ok = _json(_ref(route.response))
    if route.links:
        ok["links"] = dict(route.links)
    responses: Schema = {"200": ok}
    always = () if route.path in PUBLIC_PATHS else _ALWAYS
    for status in sorted({*route.errors, *always}):
        responses[str(status)] = _json(_ref(ErrorResponse), _ERRORS[status])
        if status == 429:
            responses["429"]["headers"] = _RETRY_AFTER
    return responses


def _operation(route: Route) -> Schema:
    operation: Schema = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": _responses(route),
    }
    if route.parameters:
        operation["parameters"] = list(route.parameters)
    if route.request is not None:
        media = "multipart/form-data" if route.form else "application/json"
        operation["requestBody"] = {
            "required": True,
            "content": {media: {"schema": _ref(route.request)}},
        }
    if route.path in PUBLIC_PATHS:
        operation["security"] = []
    return operation


def _paths(table: tuple[Route, ...]) -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for route in table:
        item = paths.setdefault(route.path, {})
        if names := re.findall(r"{(\w+)}", route.path):
            item["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in names
            ]
        item[route.method.lower()] = _operation(route)
    return paths


@functools.cache
def document() -> dict[str, Any]:
    """The document, built once (callers must not change it)."""
    table = routes()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Batch Gateway",
            "version": __version__,
            "description": "OpenAI-compatible Files and Batches API in front of many providers.",
        },
        "security": [{"bearerAuth": []}],
        "paths": _paths(table),
        "components": {
            "schemas": _components(table),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
