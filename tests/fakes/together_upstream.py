"""A fake Together AI Batch API: a real aiohttp app answering Together's documented shapes.

    server = await aiohttp_server(make_together_upstream("tg-key"))
    base_url = str(server.make_url("/v1"))
    state = server.app[TOGETHER]

It checks what it receives as Together does and refuses the rest: the Bearer key, an
upload to `POST /v1/files/upload` with `purpose=batch-api`, `file_name`, `file_type=jsonl`
and lines of exactly `{custom_id, body}`; a create of `{input_file_id, endpoint,
completion_window}`. Answers: create `201 {"job": ..., "warning": ...}`, retrieve and
cancel the bare job, list a bare array; batch errors `{"error": "<text>"}`, file errors
`{"error": {"message", "type", "param", "code"}}`. Every text carries what must not reach
a gateway client (the key, a job UUID, a user id, the host).

Jobs advance one step per `GET /v1/batches/{id}`: VALIDATING -> IN_PROGRESS (progress 50)
-> COMPLETED (100), or CANCELLED after a cancel. Lines whose `body.model` is `fail-model`
go to the error file as `{custom_id, error: {message, code}}`, the rest to the output
file as `{custom_id, response: {status_code: 200, body}}`.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler

Json = dict[str, Any]
FAIL_MODEL = "fail-model"
USER_ID = "user_789xyz012"
ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass
class FakeTogetherState:
    api_key: str
    files: dict[str, Json] = field(default_factory=dict)
    batches: dict[str, Json] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    # Form fields (not the file) of every upload, and the lines each carried.
    upload_fields: list[dict[str, str]] = field(default_factory=list)
    uploaded_lines: list[list[Json]] = field(default_factory=list)
    # "METHOD /path" prefix -> statuses answered (before anything is done) to the next calls.
    fail_next: dict[str, list[int]] = field(default_factory=dict)
    # Create the job, then answer 500 (the create's outcome looks unknown to the caller).
    error_after_create: int = 0


TOGETHER = web.AppKey("together", FakeTogetherState)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _leaky(state: FakeTogetherState, text: str) -> str:
    """A message as careless as a real one: the key, an id, a user and the host in it."""
    return f"{text} (job {uuid.uuid4()}, {USER_ID}, key {state.api_key}, api.together.xyz:443)"


def batch_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def file_error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[TOGETHER]
    state.requests.append((request.method, request.path))
    header = request.headers.get("Authorization", "")
    state.auth_headers.append(header)
    if header != f"Bearer {state.api_key}":
        if request.path.startswith("/v1/batches"):
            return batch_error(401, _leaky(state, "Invalid API key provided"))
        return file_error(401, _leaky(state, "Invalid API key provided"), "invalid_request_error")
    route = f"{request.method} {request.path}"
    for prefix, statuses in state.fail_next.items():
        if route.startswith(prefix) and statuses:
            status = statuses.pop(0)
            return batch_error(status, _leaky(state, f"upstream said {status}"))
    return await handler(request)


async def upload_file(request: web.Request) -> web.Response:
    state = request.app[TOGETHER]
    fields: dict[str, str] = {}
    content: bytes | None = None
    filename: str | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        assert isinstance(part, BodyPartReader)
        if part.name == "file":
            filename, content = part.filename, await part.read()
        elif part.name:
            fields[part.name] = await part.text()
    state.upload_fields.append(fields)
    if fields.get("purpose") != "batch-api" or content is None or not fields.get("file_name"):
        return file_error(400, "purpose, file_name and file are required", "invalid_request_error")
    if fields.get("file_type", "jsonl") != "jsonl":
        return file_error(400, "file_type must be jsonl", "invalid_request_error")
    lines = [json.loads(raw) for raw in content.splitlines() if raw.strip()]
    state.uploaded_lines.append(lines)
    for number, line in enumerate(lines, 1):
        if set(line) != {"custom_id", "body"} or len(str(line["custom_id"])) > 64:
            message = _leaky(state, f"line {number}: expected custom_id and body")
            return file_error(400, message, "invalid_request_error")
    file = _store_file(state, fields["file_name"], content, "batch-api")
    assert filename  # the part is named too
    return web.json_response(_public(file))


def _store_file(state: FakeTogetherState, name: str, content: bytes, purpose: str) -> Json:
    file_id = f"file-{uuid.uuid4()}"
    state.files[file_id] = {
        "id": file_id,
        "object": "file",
        "created_at": int(time.time()),
        "filename": name,
        "bytes": len(content),
        "purpose": purpose,
        "Processed": True,
        "FileType": "jsonl",
        "LineCount": content.count(b"\n"),
        "_content": content,
    }
    return state.files[file_id]


def _public(obj: Json) -> Json:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _file(request: web.Request) -> Json | None:
    return request.app[TOGETHER].files.get(request.match_info["file_id"])


async def list_files(request: web.Request) -> web.Response:
    files = request.app[TOGETHER].files.values()
    return web.json_response({"object": "list", "data": [_public(f) for f in files]})


async def retrieve_file(request: web.Request) -> web.Response:
    file = _file(request)
    if file is None:
        return file_error(404, "File not found", "invalid_request_error", "not_found")
    return web.json_response(_public(file))


async def file_content(request: web.Request) -> web.Response:
    file = _file(request)
    if file is None:
        return file_error(404, "File not found", "invalid_request_error", "not_found")
    return web.Response(body=file["_content"], content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    file = request.app[TOGETHER].files.pop(request.match_info["file_id"], None)
    if file is None:
        return file_error(404, "File not found", "invalid_request_error", "not_found")
    return web.json_response({"id": file["id"], "deleted": True})


async def create_batch(request: web.Request) -> web.Response:
    state = request.app[TOGETHER]
    body = await request.json()
    if not isinstance(body, dict) or set(body) - {"input_file_id", "endpoint", "completion_window"}:
        return batch_error(400, "unexpected fields in the request")
    file = state.files.get(body.get("input_file_id", ""))
    if file is None or file["purpose"] != "batch-api":
        return batch_error(400, _leaky(state, f"input file {body.get('input_file_id')} not found"))
    if body.get("endpoint") not in ENDPOINTS:
        return batch_error(400, _leaky(state, "unsupported endpoint"))
    now = time.time()
    job_id = str(uuid.uuid4())
    lines = [json.loads(raw) for raw in file["_content"].splitlines() if raw.strip()]
    state.batches[job_id] = {
        "id": job_id,
        "user_id": USER_ID,
        "input_file_id": file["id"],
        "file_size_bytes": file["bytes"],
        "status": "VALIDATING",
        "job_deadline": _iso(now + 86_400),
        "created_at": _iso(now),
        "endpoint": body["endpoint"],
        "progress": 0.0,
        "model_id": lines[0]["body"].get("model") if lines else None,
        "_lines": lines,
    }
    if state.error_after_create > 0:
        state.error_after_create -= 1
        return batch_error(500, _leaky(state, "internal error"))
    job = _public(state.batches[job_id])
    return web.json_response({"job": job, "warning": "completion_window is always 24h"}, status=201)


def _chat_completion(model: str, custom_id: str) -> Json:
    return {
        "id": f"chatcmpl-{secrets.token_hex(6)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"answer to {custom_id}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def _finish(state: FakeTogetherState, job: Json) -> None:
    out, err = [], []
    for line in job["_lines"]:
        model = line["body"].get("model", "")
        if model == FAIL_MODEL:
            message = f"Invalid model specified: {model} (job {job['id']}, {USER_ID})"
            error = {"message": message, "code": "invalid_model"}
            err.append({"custom_id": line["custom_id"], "error": error})
        else:
            response = {"status_code": 200, "body": _chat_completion(model, line["custom_id"])}
            out.append({"custom_id": line["custom_id"], "response": response})
    for key, rows, kind in (("output_file_id", out, "output"), ("error_file_id", err, "errors")):
        if rows:
            content = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
            job[key] = _store_file(state, f"{job['id']}_{kind}.jsonl", content, "batch-generated")[
                "id"
            ]
    job.update(status="COMPLETED", progress=100.0, completed_at=_iso(time.time()))


def _advance(state: FakeTogetherState, job: Json) -> None:
    if job["status"] == "VALIDATING":
        job.update(status="IN_PROGRESS", progress=50.0)
    elif job["status"] == "IN_PROGRESS":
        _finish(state, job)


def _job(request: web.Request) -> Json | None:
    return request.app[TOGETHER].batches.get(request.match_info["batch_id"])


async def retrieve_batch(request: web.Request) -> web.Response:
    state = request.app[TOGETHER]
    job = _job(request)
    if job is None:
        return batch_error(404, _leaky(state, "batch job not found"))
    _advance(state, job)
    return web.json_response(_public(job))


async def cancel_batch(request: web.Request) -> web.Response:
    state = request.app[TOGETHER]
    job = _job(request)
    if job is None:
        return batch_error(404, _leaky(state, "batch job not found"))
    if job["status"] not in ("VALIDATING", "IN_PROGRESS"):
        return batch_error(400, _leaky(state, f"cannot cancel a {job['status']} job"))
    job.update(status="CANCELLED", completed_at=_iso(time.time()))
    return web.json_response(_public(job))


async def list_batches(request: web.Request) -> web.Response:
    jobs = request.app[TOGETHER].batches.values()
    return web.json_response([_public(j) for j in reversed(list(jobs))])


def make_together_upstream(api_key: str, **options: Any) -> web.Application:
    app = web.Application(middlewares=[_gate])
    app[TOGETHER] = FakeTogetherState(api_key=api_key, **options)
    app.router.add_post("/v1/files/upload", upload_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    return app
