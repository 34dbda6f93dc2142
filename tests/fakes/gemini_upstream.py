"""A fake Gemini API (Files + Batch Mode): a real aiohttp app.

    server = await aiohttp_server(make_gemini_upstream("AIza-test"))
    base_url = str(server.make_url(""))   # no /v1beta: the adapter adds the paths
    state = server.app[GEMINI]

It checks what it receives: the `x-goog-api-key` header on every call (a wrong key gets
Google's 400 INVALID_ARGUMENT with reason API_KEY_INVALID, a missing one 403), the
resumable upload's headers and announced length, and every uploaded line's shape
(`{"key", "request": GenerateContentRequest}` in lowerCamelCase, or an
EmbedContentRequest for an embeddings file); a bad line refuses the upload with 400.

Answers have the documented shapes: Operations whose `metadata` is the batch
(`BATCH_STATE_*`, int64 counts as strings, RFC 3339 times), `{"operations",
"nextPageToken"}` lists (newest first), File resources, and google.rpc.Status error bodies
`{"error": {"code", "message", "status"}}`. A batch runs on the first retrieve and ends
after `polls_to_end` retrieves; each request whose text holds FAIL gets an `error` Status
(whose message names Gemini resources, for the tests to see scrubbed), a request with
tools a functionCall, others the text `fake reply to <key>`. A cancelled batch ends at
the next retrieve with only its first request run; with `fail_batches` a batch fails
whole at its first retrieve. The upload URL the start call returns
is on this server unless `foreign_upload_host` names another. Faults come from
`tests.fakes.faults` (`fail_next`, `fail_on`, ...).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes import faults
from tests.fakes.faults import Captured, FaultState, Ledger, Replayer

Json = dict[str, Any]

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_PART_KEYS = {"text", "inlineData", "functionCall", "functionResponse"}
_REQUEST_KEYS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig"}
_CONFIG_KEYS = {
    "temperature",
    "topP",
    "maxOutputTokens",
    "stopSequences",
    "candidateCount",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseMimeType",
    "responseJsonSchema",
}
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"


@dataclass
class FakeGeminiState(FaultState):
    api_key: str
    files: dict[str, Json] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    batches: Ledger = field(default_factory=Ledger)
    # Every request as (method, path with query, x-goog-api-key).
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    polls_to_end: int = 1
    # Batches fail as a whole at their first retrieve (an Operation with an `error`).
    fail_batches: bool = False
    foreign_upload_host: str | None = None
    _uploads: dict[str, Json] = field(default_factory=dict)


GEMINI = web.AppKey("gemini", FakeGeminiState)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def error_response(status: int, message: str, reason: str | None = None) -> web.Response:
    error: Json = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if reason:
        info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}
        error["details"] = [info | {"domain": "googleapis.com"}]
    return web.json_response({"error": error}, status=status)


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[GEMINI]
    key = request.headers.get("x-goog-api-key")
    state.calls.append((request.method, request.path_qs, key))
    if key is None:
        return error_response(403, "Method doesn't allow unregistered callers.")
    if key != state.api_key:
        message = f"API key not valid. Please pass a valid API key. ({key})"
        return error_response(400, message, "API_KEY_INVALID")
    return await faults.serve(
        state,
        request,
        lambda: handler(request),
        error=error_response,
        replayers=REPLAYERS,
        label="Injected failure",
    )


# --- files ---------------------------------------------------------------------------


def _check_part(part: Any) -> str | None:
    if not isinstance(part, dict) or len(part) != 1 or next(iter(part)) not in _PART_KEYS:
        return f"invalid part {str(part)[:80]}"
    if "inlineData" in part and set(part["inlineData"]) != {"mimeType", "data"}:
        return "inlineData needs mimeType and data"
    return None


def _check_generate(request: Any) -> str | None:
    if not isinstance(request, dict) or set(request) - _REQUEST_KEYS:
        return f"unknown GenerateContentRequest fields {sorted(set(request or {}) - _REQUEST_KEYS)}"
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents must be a non-empty list"
    for content in contents:
        if content.get("role") not in ("user", "model") or not content.get("parts"):
            return "each content needs role user|model and parts"
        for part in content["parts"]:
            if problem := _check_part(part):
                return problem
    for part in (request.get("systemInstruction") or {"parts": []})["parts"]:
        if problem := _check_part(part):
            return problem
    if unknown := set(request.get("generationConfig") or {}) - _CONFIG_KEYS:
        return f"unknown generationConfig fields {sorted(unknown)}"
    return None


def _check_embed(request: Any) -> str | None:
    if not isinstance(request, dict) or set(request) - {"content", "outputDimensionality"}:
        return "invalid EmbedContentRequest"
    parts = (request.get("content") or {}).get("parts")
    return None if isinstance(parts, list) and parts else "content.parts is required"


def _check_lines(body: bytes) -> str | None:
    keys: set[str] = set()
    for number, raw in enumerate(body.splitlines(), 1):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return f"line {number}: not JSON"
        if not isinstance(line, dict) or set(line) != {"key", "request"}:
            return f"line {number}: each line must be {{key, request}}"
        if not isinstance(line["key"], str) or line["key"] in keys:
            return f"line {number}: key must be a unique string"
        keys.add(line["key"])
        request = line["request"]
        check = _check_embed if "content" in request else _check_generate
        if problem := check(request):
            return f"line {number}: {problem}"
    return None


async def upload(request: web.Request) -> web.StreamResponse:
    state = request.app[GEMINI]
    upload_id = request.query.get("upload_id")
    if upload_id is None:
        return await _start(request, state)
    pending = state._uploads.pop(upload_id, None)
    if pending is None:
        return error_response(404, "No such upload session.")
    if request.headers.get("X-Goog-Upload-Command") != "upload, finalize":
        return error_response(400, "expected X-Goog-Upload-Command: upload, finalize")
    if request.headers.get("X-Goog-Upload-Offset") != "0":
        return error_response(400, "expected X-Goog-Upload-Offset: 0")
    body = await request.read()
    if len(body) != pending["size"] or request.headers.get("Content-Length") != str(len(body)):
        return error_response(400, f"announced {pending['size']} bytes, got {len(body)}")
    if problem := _check_lines(body):
        return error_response(400, problem)
    name = f"files/{secrets.token_hex(6)}"
    now = _now()
    state.files[name] = {
        "name": name,
        "displayName": pending["displayName"],
        "mimeType": pending["mimeType"],
        "sizeBytes": str(len(body)),
        "createTime": now,
        "updateTime": now,
        "uri": f"https://generativelanguage.googleapis.com/v1beta/{name}",
        "state": "ACTIVE",
        "source": "UPLOADED",
    }
    state.contents[name] = body
    headers = {"X-Goog-Upload-Status": "final"}
    return web.json_response({"file": state.files[name]}, headers=headers)


async def _start(request: web.Request, state: FakeGeminiState) -> web.StreamResponse:
    headers = request.headers
    if headers.get("X-Goog-Upload-Protocol") != "resumable":
        return error_response(400, "expected X-Goog-Upload-Protocol: resumable")
    if headers.get("X-Goog-Upload-Command") != "start":
        return error_response(400, "expected X-Goog-Upload-Command: start")
    size = headers.get("X-Goog-Upload-Header-Content-Length", "")
    if not size.isdigit():
        return error_response(400, "X-Goog-Upload-Header-Content-Length is required")
    meta = (await request.json()).get("file") or {}
    upload_id = secrets.token_hex(8)
    state._uploads[upload_id] = {
        "size": int(size),
        "mimeType": headers.get("X-Goog-Upload-Header-Content-Type", ""),
        "displayName": meta.get("displayName") or meta.get("display_name") or "",
    }
    host = state.foreign_upload_host or f"{request.scheme}://{request.host}"
    url = f"{host}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
    return web.Response(headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})


def _file_or_404(request: web.Request) -> Json | web.Response:
    name = f"files/{request.match_info['file']}"
    found = request.app[GEMINI].files.get(name)
    return found if found is not None else error_response(404, f"File {name} not found.")


async def get_file(request: web.Request) -> web.Response:
    found = _file_or_404(request)
    return found if isinstance(found, web.Response) else web.json_response(found)


async def delete_file(request: web.Request) -> web.Response:
    found = _file_or_404(request)
    if isinstance(found, web.Response):
        return found
    state = request.app[GEMINI]
    del state.files[found["name"]]
    state.contents.pop(found["name"], None)
    return web.json_response({})


async def list_files(request: web.Request) -> web.Response:
    files = list(request.app[GEMINI].files.values())[::-1]
    return web.json_response({"files": files})


async def download(request: web.Request) -> web.StreamResponse:
    name, _, verb = request.match_info["spec"].partition(":")
    if verb != "download" or request.query.get("alt") != "media":
        return error_response(400, "expected files/{name}:download?alt=media")
    body = request.app[GEMINI].contents.get(f"files/{name}")
    if body is None:
        return error_response(404, f"File files/{name} not found.")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for start in range(0, len(body), 97):  # lines straddle chunks
        await response.write(body[start : start + 97])
        await asyncio.sleep(0)
    await response.write_eof()
    return response


# --- batches -------------------------------------------------------------------------


def _create(state: FakeGeminiState, model: str, method: str, body: Json) -> Json | str:
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict) or not isinstance(batch.get("displayName"), str):
        return "batch.displayName is required"
    file_name = (batch.get("inputConfig") or {}).get("fileName")
    if file_name not in state.files:
        return f"input file {file_name} not found"
    lines = [orjson.loads(x) for x in state.contents[file_name].splitlines()]
    embed = method == "asyncBatchEmbedContent"
    if any(("content" in line["request"]) != embed for line in lines):
        return f"{method} got requests of the other kind"
    name = f"batches/{secrets.token_hex(6)}"
    meta = {
        "@type": _BATCH_TYPE,
        "name": name,
        "model": f"models/{model}",
        "displayName": batch["displayName"],
        "inputConfig": {"fileName": file_name},
        "createTime": _now(),
        "updateTime": _now(),
        "batchStats": {"requestCount": str(len(lines)), "pendingRequestCount": str(len(lines))},
        "state": "BATCH_STATE_PENDING",
    }
    state.batches[name] = {"name": name, "metadata": meta, "done": False, "_lines": lines}
    state.batches[name]["_polls"] = 0
    return state.batches[name]


def _public(op: Json) -> Json:
    return {k: v for k, v in op.items() if not k.startswith("_")}


async def create_batch(request: web.Request) -> web.Response:
    model, _, method = request.match_info["spec"].partition(":")
    if method not in ("batchGenerateContent", "asyncBatchEmbedContent"):
        return error_response(404, f"unknown method {method}")
    made = _create(request.app[GEMINI], model, method, await request.json())
    if isinstance(made, str):
        return error_response(400, made)
    return web.json_response(_public(made))


def _answer(line: Json, model: str, name: str) -> Json:
    key, request = line["key"], line["request"]
    if "content" in request:
        return {"key": key, "response": {"embedding": {"values": [0.5, -0.25, 0.125]}}}
    text = orjson.dumps(request["contents"]).decode()
    if "FAIL" in text:
        message = f"Request {key} of {name} is invalid: see files/abc123 for details"
        return {"key": key, "error": {"code": 3, "message": message}}
    parts: list[Json] = [{"text": f"fake reply to {key}"}]
    if request.get("tools"):
        function = request["tools"][0]["functionDeclarations"][0]["name"]
        parts = [{"functionCall": {"name": function, "args": {"city": "Paris"}}}]
    usage = {
        "promptTokenCount": 10,
        "candidatesTokenCount": 5,
        "totalTokenCount": 17,
        "thoughtsTokenCount": 2,
        "cachedContentTokenCount": 4,
    }
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}
    response = {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": secrets.token_hex(8),
    }
    return {"key": key, "response": response}


def _finish(state: FakeGeminiState, op: Json, final: str, lines: list[Json]) -> None:
    meta = op["metadata"]
    model = meta["model"].removeprefix("models/")
    answers = [_answer(line, model, op["name"]) for line in lines]
    results = f"files/batch-{secrets.token_hex(6)}"
    state.contents[results] = b"".join(orjson.dumps(a) + b"\n" for a in answers)
    now = _now()
    state.files[results] = {
        "name": results,
        "mimeType": "application/jsonl",
        "sizeBytes": str(len(state.contents[results])),
        "createTime": now,
        "updateTime": now,
        "state": "ACTIVE",
        "source": "GENERATED",
    }
    failed = sum("error" in a for a in answers)
    meta["batchStats"] = {
        "requestCount": str(len(op["_lines"])),
        "successfulRequestCount": str(len(answers) - failed),
        "failedRequestCount": str(failed),
        "pendingRequestCount": str(len(op["_lines"]) - len(answers)),
    }
    meta |= {"state": final, "endTime": now, "updateTime": now}
    meta["output"] = {"responsesFile": results}
    op |= {"done": True, "response": {"@type": _OUTPUT_TYPE, "responsesFile": results}}


def _advance(state: FakeGeminiState, op: Json) -> None:
    meta = op["metadata"]
    if op["done"]:
        return
    if op.get("_cancel"):
        _finish(state, op, "BATCH_STATE_CANCELLED", op["_lines"][:1])
        return
    op["_polls"] += 1
    if state.fail_batches:
        message = f"Input {meta['inputConfig']['fileName']} of {op['name']} is malformed."
        meta |= {"state": "BATCH_STATE_FAILED", "endTime": _now()}
        op |= {"done": True, "error": {"code": 3, "message": message}}
        return
    meta["state"] = "BATCH_STATE_RUNNING"
    if op["_polls"] >= state.polls_to_end:
        _finish(state, op, "BATCH_STATE_SUCCEEDED", op["_lines"])


def _batch_or_404(request: web.Request) -> tuple[Json | None, str]:
    batch_id, _, verb = request.match_info["spec"].partition(":")
    return request.app[GEMINI].batches.get(f"batches/{batch_id}"), verb


async def get_batch(request: web.Request) -> web.Response:
    op, verb = _batch_or_404(request)
    if op is None or verb:
        return error_response(404, "Batch not found.")
    _advance(request.app[GEMINI], op)
    return web.json_response(_public(op))


async def cancel_batch(request: web.Request) -> web.Response:
    op, verb = _batch_or_404(request)
    if op is None or verb != "cancel":
        return error_response(404, "Batch not found.")
    if op["done"]:
        return error_response(400, f"Batch {op['name']} has already finished.")
    op["_cancel"] = True
    return web.json_response({})


async def list_batches(request: web.Request) -> web.Response:
    state = request.app[GEMINI]
    size = int(request.query.get("pageSize", "50"))
    token = request.query.get("pageToken")
    page, more = state.batches.page(size, after=token)
    body: Json = {"operations": [_public(op) for op in page]}
    if more and page:
        body["nextPageToken"] = page[-1]["name"]
    return web.json_response(body)


def _replay_create(state: FakeGeminiState, call: Captured) -> None:
    model, _, method = call.match_info["spec"].partition(":")
    _create(state, model, method, orjson.loads(call.body))


REPLAYERS: dict[str, Replayer[FakeGeminiState]] = {
    "POST /v1beta/models/{spec}": _replay_create,
}


def make_gemini_upstream(api_key: str, **options: Any) -> web.Application:
    state = FakeGeminiState(api_key=api_key, **options)
    app = web.Application(middlewares=[_gate])
    app[GEMINI] = state
    app.router.add_post("/upload/v1beta/files", upload)
    app.router.add_get("/v1beta/files", list_files)
    app.router.add_get("/v1beta/files/{file}", get_file)
    app.router.add_delete("/v1beta/files/{file}", delete_file)
    app.router.add_get("/download/v1beta/files/{spec}", download)
    app.router.add_post("/v1beta/models/{spec}", create_batch)
    app.router.add_get("/v1beta/batches", list_batches)
    app.router.add_get("/v1beta/batches/{spec}", get_batch)
    app.router.add_post("/v1beta/batches/{spec}", cancel_batch)
    return app
