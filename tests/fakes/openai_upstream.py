"""A fake OpenAI-compatible Batch API upstream (OpenAI, fastapi.ai, anyapi.ai): a real aiohttp app.

Use it with pytest-aiohttp::

    server = await aiohttp_server(make_openai_upstream("sk-up", cancel_style="partial"))
    base_url = str(server.make_url("/v1"))
    state = server.app[UPSTREAM]

Batches advance one step per `GET /v1/batches/{id}`: validating -> in_progress -> finalizing ->
completed (or cancelling -> cancelled). Input lines whose `body.model == "fail-model"` end up in the
error file with a 400 response; an unparseable input file makes the batch `failed`.
Stored objects keep private keys prefixed with `_` (`files[id]["_content"]` holds the raw bytes).

`flavor="llama_stack"` behaves like llama-stack 0.7.3's OpenAI-compatible Batch API instead:
result lines whose `id` and `response.request_id` are `batch_req_<batch id>_<line number>`,
whose `response.body` is a JSON-encoded string and which have no `error` key; failed requests
as bare `{id, custom_id, error: {type, message}}` lines; both files always made (an empty one
is 0 bytes), without a trailing newline and with purpose `batch`; file objects without
`status`/`status_details`.

Faults (`fail_next`, `fail_on`, `fault_rates`, ...) and the busy-account mode
(`preload_batches`, `background_creates_per_second`) come from `tests.fakes.faults`; deferred
faults replay `POST /v1/batches` and `POST /v1/batches/{batch_id}/cancel`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler

from tests.fakes import faults
from tests.fakes.faults import Captured, FaultState, Ledger, Replayer

Json = dict[str, Any]

ANYAPI_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/completions"})
FASTAPI_ENDPOINTS = ANYAPI_ENDPOINTS | {"/v1/responses", "/v1/moderations"}
TIMESTAMP_FIELDS = (
    *("in_progress_at", "expires_at", "finalizing_at", "completed_at"),
    *("failed_at", "expired_at", "cancelling_at", "cancelled_at"),
)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
FAIL_MODEL = "fail-model"
_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    429: ("requests", "rate_limit_exceeded"),
}
# OpenAI's metadata limits: pairs, key length, value length.
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512
FILES_LIST_MAX = 10000


@dataclass
class FakeOpenAIState(FaultState):
    api_key: str
    files: Ledger = field(default_factory=Ledger)
    batches: Ledger = field(default_factory=Ledger)
    auth_headers: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    cancel_style: Literal["full", "partial"] = "full"
    # Which service's result files and file objects to imitate (see the module docstring).
    flavor: Literal["openai", "llama_stack"] = "openai"
    placeholders: bool = False
    endpoints: frozenset[str] = FASTAPI_ENDPOINTS
    latency: float = 0.0
    in_flight: int = 0
    peak_in_flight: int = 0
    # Per path: requests in flight now, the most ever at once, and start times.
    in_flight_by_path: dict[str, int] = field(default_factory=dict)
    peak_by_path: dict[str, int] = field(default_factory=dict)
    started_by_path: dict[str, list[float]] = field(default_factory=dict)
    # OpenAI's documented limit: a batch of more requests fails validation.
    max_lines: int = 50_000
    # Share of lines (picked by a hash of the custom_id, so the same ones every time) that
    # get a 500 `server_error` response, as OpenAI's error file shows an overloaded model.
    server_error_rate: float = 0.0
    # Batches end `expired` at the finalizing step: the first `expire_after` lines ran,
    # the rest are `batch_expired` error lines (OpenAI's docs on the completion window).
    expire_after: int | None = None
    # While set, batches stay in_progress (a slow provider, for tests that act meanwhile).
    hold: bool = False


UPSTREAM = web.AppKey("upstream", FakeOpenAIState)


def _now() -> int:
    return int(time.time())


def error_response(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> web.Response:
    """An OpenAI error envelope; type/code default by status (429 also gets `Retry-After: 0`)."""
    type_, default_code = _ERROR_TYPES.get(status, ("server_error", None))
    body = envelope(message, type_, param, code or default_code)
    headers = {"Retry-After": "0"} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)


def envelope(message: str, type_: str, param: str | None, code: str | None) -> Json:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class UpstreamError(Exception):
    """Raised by handlers; `_gate` answers it with the OpenAI error envelope."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.response = error_response(status, message, param=param)


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[UPSTREAM]
    auth = request.headers.get("Authorization", "")
    state.auth_headers.append(auth)
    state.requests.append((request.method, request.path))
    if auth != f"Bearer {state.api_key}":
        return error_response(401, "Incorrect API key provided", code="invalid_api_key")
    return await faults.serve(
        state,
        request,
        lambda: _serve(state, request, handler),
        error=error_response,
        replayers=REPLAYERS,
    )


async def _serve(
    state: FakeOpenAIState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Run the handler, counting requests in flight and answering `UpstreamError`s."""
    path = f"{request.method} {request.path}"
    state.in_flight += 1
    state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
    state.in_flight_by_path[path] = state.in_flight_by_path.get(path, 0) + 1
    state.peak_by_path[path] = max(state.peak_by_path.get(path, 0), state.in_flight_by_path[path])
    state.started_by_path.setdefault(path, []).append(time.monotonic())
    try:
        if state.latency:
            await asyncio.sleep(state.latency)
        response = await handler(request)
    except UpstreamError as exc:
        response = exc.response
    finally:
        state.in_flight -= 1
        state.in_flight_by_path[path] -= 1
    return response


def _public(obj: Json) -> Json:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _store_file(
    state: FakeOpenAIState,
    content: bytes,
    filename: str,
    purpose: str,
    expires_at: int | None,
    created_at: int | None = None,
) -> Json:
    file_id = "file-UP" + secrets.token_hex(10)
    state.files[file_id] = {
        "id": file_id,
        "object": "file",
        "bytes": len(content),
        "created_at": _now() if created_at is None else created_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": expires_at,
        "status_details": None,
        "_content": content,
    }
    if state.flavor == "llama_stack":  # its OpenAIFileObject has no status fields
        del state.files[file_id]["status"], state.files[file_id]["status_details"]
    return state.files[file_id]


def _render_batch(state: FakeOpenAIState, batch: Json) -> Json:
    out = _public(batch)
    if state.placeholders:
        out |= {key: 123 for key in TIMESTAMP_FIELDS if out[key] is None}
        out |= {key: "<string>" for key in ("output_file_id", "error_file_id") if out[key] is None}
        for key in ("errors", "model", "usage"):
            out.pop(key, None)
    return out


async def upload_file(request: web.Request) -> web.Response:
    state = request.app[UPSTREAM]
    if not request.content_type.startswith("multipart/"):
        raise UpstreamError(400, "Expected multipart/form-data")
    fields: dict[str, str] = {}
    content: bytes | None = None
    filename = "upload.jsonl"
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name == "file":
            content = await part.read()
            filename = part.filename or filename
        else:
            fields[part.name] = await part.text()
    if content is None or "purpose" not in fields:
        missing = "file" if content is None else "purpose"
        raise UpstreamError(400, f"Missing required parameter: '{missing}'.", param=missing)
    seconds = fields.get("expires_after[seconds]")
    expires_at = _now() + int(seconds) if seconds and seconds.isdigit() else None
    return web.json_response(
        _public(_store_file(state, content, filename, fields["purpose"], expires_at))
    )


def _file(request: web.Request) -> Json:
    file_id = request.match_info["file_id"]
    if (stored := request.app[UPSTREAM].files.get(file_id)) is None:
        raise UpstreamError(404, f"No such File object: {file_id}", param="id")
    return stored


async def retrieve_file(request: web.Request) -> web.Response:
    return web.json_response(_public(_file(request)))


async def file_content(request: web.Request) -> web.Response:
    return web.Response(body=_file(request)["_content"], content_type="application/octet-stream")


async def list_files(request: web.Request) -> web.Response:
    """`GET /v1/files`: `purpose`, `limit` (1..10000), `order` (asc|desc), `after` cursor."""
    state, query = request.app[UPSTREAM], request.query
    limit = _limit(query.get("limit"), FILES_LIST_MAX, FILES_LIST_MAX)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        msg = f"Invalid 'order': expected one of 'asc' or 'desc', but got '{order}' instead."
        raise UpstreamError(400, msg, param="order")
    purpose = query.get("purpose")
    page, has_more = state.files.page(
        limit,
        after=query.get("after"),
        newest_first=order == "desc",
        keep=(lambda f: f["purpose"] == purpose) if purpose else None,
    )
    return web.json_response(_list_envelope([_public(f) for f in page], has_more))


def _limit(raw: str | None, default: int, most: int) -> int:
    try:
        limit = default if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise UpstreamError(400, f"limit must be between 1 and {most}", param="limit")
    return limit


def _list_envelope(page: list[Json], has_more: bool) -> Json:
    first_id, last_id = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return {"object": "list", "data": page, "first_id": first_id, "last_id": last_id} | {
        "has_more": has_more
    }


async def delete_file(request: web.Request) -> web.Response:
    stored = _file(request)
    del request.app[UPSTREAM].files[stored["id"]]
    return web.json_response({"id": stored["id"], "object": "file", "deleted": True})


def _json_type(value: Any) -> str:
    """OpenAI's wording for a JSON value's type in its validation messages."""
    if value is None:
        return "null"
    names: list[tuple[type, str]] = [(bool, "a boolean"), (int, "an integer")]
    names += [(float, "a decimal"), (str, "a string"), (list, "an array"), (dict, "an object")]
    return next(name for kind, name in names if isinstance(value, kind))


def _check_metadata(metadata: Any) -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 chars, string values up to 512."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        msg = f"Invalid type for 'metadata': expected an object, but got {_json_type(metadata)}"
        raise UpstreamError(400, msg + " instead.", param="metadata")
    if (count := len(metadata)) > METADATA_PAIRS:
        msg = "Invalid 'metadata': too many properties. Expected an object with at most"
        msg += f" {METADATA_PAIRS} properties, but got an object with {count} properties instead."
        raise UpstreamError(400, msg, param="metadata")
    for key, value in metadata.items():
        too_long = "string too long. Expected a string with maximum length"
        if len(key) > METADATA_KEY_CHARS:
            msg = f"Invalid 'metadata': {too_long} {METADATA_KEY_CHARS}, but got a string with"
            raise UpstreamError(400, f"{msg} length {len(key)} instead.", param="metadata")
        if not isinstance(value, str):
            msg = f"Invalid type for 'metadata.{key}': expected a string, but got"
            raise UpstreamError(400, f"{msg} {_json_type(value)} instead.", param="metadata")
        if len(value) > METADATA_VALUE_CHARS:
            msg = f"Invalid 'metadata.{key}': {too_long} {METADATA_VALUE_CHARS}, but got a"
            raise UpstreamError(
                400, f"{msg} string with length {len(value)} instead.", param="metadata"
            )


async def create_batch(request: web.Request) -> web.Response:
    state = request.app[UPSTREAM]
    return web.json_response(_render_batch(state, _create_batch(state, await request.read())))


def _create_batch(state: FakeOpenAIState, raw: bytes) -> Json:
    """Validate a create body and store the batch; replayed as is by deferred faults."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise UpstreamError(400, "Request body must be JSON") from None
    if not isinstance(body, dict):
        raise UpstreamError(400, "Request body must be a JSON object")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise UpstreamError(400, f"Missing required parameter: '{name}'.", param=name)
    if (file_id := body["input_file_id"]) not in state.files:
        raise UpstreamError(400, f"No such File object: {file_id}", param="input_file_id")
    if body["endpoint"] not in state.endpoints:
        raise UpstreamError(400, f"Unsupported endpoint: {body['endpoint']}", param="endpoint")
    if body["completion_window"] != "24h":
        raise UpstreamError(400, "completion_window must be '24h'", param="completion_window")
    _check_metadata(body.get("metadata"))
    return _new_batch(state, file_id, body["endpoint"], body.get("metadata"), _now())


def _new_batch(
    state: FakeOpenAIState, file_id: str, endpoint: str, metadata: Any, created: int
) -> Json:
    batch: Json = {
        "id": "batch_UP" + secrets.token_hex(10),
        "object": "batch",
        "endpoint": endpoint,
        "model": None,
        "errors": None,
        "input_file_id": file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        **dict.fromkeys(TIMESTAMP_FIELDS),
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": None,
        "metadata": metadata,
    }
    batch["expires_at"] = created + 86400
    state.batches[batch["id"]] = batch
    return batch


def _add_unrelated(state: FakeOpenAIState, created_at: int, tag: str | None) -> None:
    """Someone else's batch on the same account, with its own input file."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "other-0", "method": "POST", "url": "/v1/chat/completions", "body": body}
    content = (json.dumps(line) + "\n").encode()
    file = _store_file(state, content, "theirs.jsonl", "batch", None, created_at)
    metadata = {faults.GATEWAY_TAG: tag} if tag else None
    _new_batch(state, file["id"], "/v1/chat/completions", metadata, created_at)


def _parse_lines(state: FakeOpenAIState, batch: Json) -> tuple[list[Json], list[Json]]:
    """(valid input lines, BatchError dicts for the invalid ones)."""
    content: bytes = state.files[batch["input_file_id"]]["_content"]
    lines: list[Json] = []
    errors: list[Json] = []
    for number, raw in enumerate(content.decode("utf-8", "replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            errors.append(_batch_error("invalid_json_line", "Invalid JSON line", None, number))
        elif line.get("url") != batch["endpoint"]:
            msg = "The URL provided for this request does not match the batch endpoint"
            errors.append(_batch_error("invalid_url", msg, "url", number))
        else:
            lines.append(line)
    if not lines and not errors:
        errors.append(_batch_error("empty_file", "The input file has no requests", None, None))
    if len(lines) > state.max_lines:
        msg = f"The batch input file is larger than the {state.max_lines} maximum requests."
        errors.append(_batch_error("too_many_requests", msg, None, None))
    return lines, errors


def _batch_error(code: str, message: str, param: str | None, line: int | None) -> Json:
    return {"code": code, "message": message, "param": param, "line": line}


def _result_line(custom_id: Any, status: int, body: Json) -> str:
    response = {"status_code": status, "request_id": "req_UP" + secrets.token_hex(10), "body": body}
    line = {"id": "batch_req_UP" + secrets.token_hex(10), "custom_id": custom_id}
    return json.dumps({**line, "response": response, "error": None})


def _llama_stack_line(batch_id: str, number: int, custom_id: Any, body: Json | None) -> str:
    """llama-stack's line: its own ids from the batch id, the body JSON-encoded, or a bare
    error (`body` None) as its batch processor writes when inference raises."""
    line_id = f"batch_req_{batch_id}_{number}"
    if body is None:
        error = {"type": "request_failed", "message": "Error code: 404 - model not found"}
        return json.dumps({"id": line_id, "custom_id": custom_id, "error": error})
    response = {"status_code": 200, "request_id": line_id, "body": json.dumps(body)}
    return json.dumps({"id": line_id, "custom_id": custom_id, "response": response})


def _chat_completion(model: str, custom_id: Any) -> Json:
    message = {"role": "assistant", "content": f"fake reply to {custom_id}"}
    return {
        "id": "chatcmpl-UP" + secrets.token_hex(10),
        "object": "chat.completion",
        "created": _now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _finish(state: FakeOpenAIState, batch: Json) -> None:
    """Write the output/error files and the final counts, model and usage."""
    ok: list[str] = []
    failed: list[str] = []
    prompt = completion = 0
    llama = state.flavor == "llama_stack"
    for number, line in enumerate(batch["_lines"], start=1):
        model, custom_id = line["body"].get("model", "gpt-4o-mini"), line.get("custom_id")
        if state.expire_after is not None and number > state.expire_after:
            failed.append(_expired_line(custom_id))
            continue
        if _server_error(state, custom_id):
            msg = "The server had an error while processing your request. Sorry about that!"
            failed.append(_result_line(custom_id, 500, envelope(msg, "server_error", None, None)))
            continue
        if model == FAIL_MODEL:
            if llama:
                failed.append(_llama_stack_line(batch["id"], number, custom_id, None))
                continue
            msg = f"The model `{model}` does not exist."
            body = envelope(msg, "invalid_request_error", "model", "model_not_found")
            failed.append(_result_line(custom_id, 400, body))
            continue
        body = _chat_completion(model, custom_id)
        prompt += body["usage"]["prompt_tokens"]
        completion += body["usage"]["completion_tokens"]
        if llama:
            ok.append(_llama_stack_line(batch["id"], number, custom_id, body))
        else:
            ok.append(_result_line(custom_id, 200, body))
    for key, out_lines in (("output_file_id", ok), ("error_file_id", failed)):
        if llama:  # both files, always; joined without a trailing newline
            name = f"{batch['id']}_{'success' if key == 'output_file_id' else 'error'}.jsonl"
            content = "\n".join(out_lines).encode()
            batch[key] = _store_file(state, content, name, "batch", None)["id"]
        elif out_lines:
            content = ("\n".join(out_lines) + "\n").encode()
            name = f"{batch['id']}_{key.removesuffix('_file_id')}.jsonl"
            batch[key] = _store_file(state, content, name, "batch_output", None)["id"]
    batch["request_counts"] = {
        "total": len(ok) + len(failed),
        "completed": len(ok),
        "failed": len(failed),
    }
    batch["model"] = next((ln["body"].get("model") for ln in batch["_lines"]), None)
    batch["usage"] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _server_error(state: FakeOpenAIState, custom_id: Any) -> bool:
    if not state.server_error_rate:
        return False
    return zlib.crc32(str(custom_id).encode()) % 10_000 < state.server_error_rate * 10_000


def _expired_line(custom_id: Any) -> str:
    error = {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    line = {"id": "batch_req_UP" + secrets.token_hex(10), "custom_id": custom_id}
    return json.dumps({**line, "response": None, "error": error})


def _advance(state: FakeOpenAIState, batch: Json) -> None:
    status = batch["status"]
    if status == "validating":
        lines, errors = _parse_lines(state, batch)
        if errors:
            batch.update(
                status="failed", failed_at=_now(), errors={"object": "list", "data": errors}
            )
            return
        batch["_lines"] = lines
        batch["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
        batch.update(status="in_progress", in_progress_at=_now())
    elif status == "in_progress" and not state.hold:
        batch.update(status="finalizing", finalizing_at=_now())
    elif status == "finalizing":
        _finish(state, batch)
        if state.expire_after is not None:
            batch.update(status="expired", expired_at=_now())
        else:
            batch.update(status="completed", completed_at=_now())
    elif status == "cancelling":
        batch.update(status="cancelled", cancelled_at=_now())


def _batch(request: web.Request) -> Json:
    batch_id = request.match_info["batch_id"]
    if (batch := request.app[UPSTREAM].batches.get(batch_id)) is None:
        raise UpstreamError(404, f"No such Batch object: {batch_id}", param="batch_id")
    return batch


async def retrieve_batch(request: web.Request) -> web.Response:
    state = request.app[UPSTREAM]
    batch = _batch(request)
    _advance(state, batch)
    return web.json_response(_render_batch(state, batch))


async def cancel_batch(request: web.Request) -> web.Response:
    return _cancel(request.app[UPSTREAM], _batch(request))


def _cancel(state: FakeOpenAIState, batch: Json) -> web.Response:
    if batch["status"] in TERMINAL:
        raise UpstreamError(400, f"Cannot cancel a batch with status '{batch['status']}'.")
    if state.cancel_style == "partial":
        batch.update(status="cancelled", cancelled_at=_now())
        return web.json_response({"id": batch["id"], "object": "batch", "status": "cancelled"})
    if batch["status"] != "cancelling":
        batch.update(status="cancelling", cancelling_at=_now())
    return web.json_response(_render_batch(state, batch))


async def list_batches(request: web.Request) -> web.Response:
    state = request.app[UPSTREAM]
    limit = _limit(request.query.get("limit"), 20, 100)
    page, has_more = state.batches.page(limit, after=request.query.get("after") or None)
    return web.json_response(_list_envelope([_render_batch(state, b) for b in page], has_more))


def _replay_create(state: FakeOpenAIState, call: Captured) -> None:
    try:
        _create_batch(state, call.body)
    except UpstreamError:
        pass  # an invalid body makes no batch, late or not


def _replay_cancel(state: FakeOpenAIState, call: Captured) -> None:
    batch = state.batches.get(call.match_info["batch_id"])
    if batch is not None and batch["status"] not in TERMINAL:
        _cancel(state, batch)


REPLAYERS: dict[str, Replayer[FakeOpenAIState]] = {
    "POST /v1/batches": _replay_create,
    "POST /v1/batches/{batch_id}/cancel": _replay_cancel,
}


def make_openai_upstream(api_key: str, **state_options: Any) -> web.Application:
    """The fake; `state_options` are FakeOpenAIState fields (cancel_style, placeholders, ...)."""
    # OpenAI takes uploads of up to 512 MB (aiohttp would refuse more than 1 MB).
    app = web.Application(middlewares=[_gate], client_max_size=512 * 1024 * 1024)
    state = app[UPSTREAM] = FakeOpenAIState(api_key=api_key, **state_options)
    app.cleanup_ctx.append(faults.lifecycle(state, lambda at, tag: _add_unrelated(state, at, tag)))
    app.add_routes(
        [
            web.post("/v1/files", upload_file),
            web.get("/v1/files", list_files),
            web.get("/v1/files/{file_id}", retrieve_file),
            web.delete("/v1/files/{file_id}", delete_file),
            web.get("/v1/files/{file_id}/content", file_content),
            web.post("/v1/batches", create_batch),
            web.get("/v1/batches", list_batches),
            web.get("/v1/batches/{batch_id}", retrieve_batch),
            web.post("/v1/batches/{batch_id}/cancel", cancel_batch),
        ]
    )
    return app
