"""A fake Mistral Batch API (`/v1/files`, `/v1/batch/jobs`): a real aiohttp app.

    server = await aiohttp_server(make_mistral_upstream("mistral-key"))
    base_url = str(server.make_url("/v1"))
    state = server.app[MISTRAL]

It checks what it gets: the Bearer key (401 `{"message": "Unauthorized", ...}` otherwise),
multipart uploads with `purpose=batch` whose lines are exactly `{custom_id, body}` with no
`model` in the body, and job bodies (`input_files`, `model`, `endpoint`, `metadata` of
strings, `timeout_hours`). Refusals use Mistral's error body
`{object: "error", message, type, param, code}`; 422s FastAPI's `{detail: [...]}`.

A job is QUEUED, RUNNING at the first retrieve, and ends at the `polls_to_end`-th: every
request runs, except a line whose first message says "FAIL" (a 400 in the error file).
`expire=True` ends it TIMEOUT_EXCEEDED with only the first request run; a cancelled job
ends CANCELLED at the next retrieve, with its first request run. Model `unknown-model`
is refused at create. `fail_next` etc. come from `tests.fakes.faults`.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes import faults
from tests.fakes.faults import Captured, FaultState, Ledger, Replayer

Json = dict[str, Any]
ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/embeddings", "/v1/fim/completions", "/v1/moderations"}
)
UNKNOWN_MODEL = "unknown-model"


@dataclass
class FakeMistralState(FaultState):
    api_key: str
    files: dict[str, Json] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    jobs: Ledger = field(default_factory=Ledger)
    # Every job body as received.
    job_bodies: list[Json] = field(default_factory=list)
    # Every request as (method, path, Authorization).
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    polls_to_end: int = 2
    expire: bool = False


MISTRAL = web.AppKey("mistral", FakeMistralState)


def error_response(status: int, message: str) -> web.Response:
    if status == 401:
        return web.json_response(
            {"message": "Unauthorized", "request_id": uuid.uuid4().hex}, status=401
        )
    if status == 422:
        detail = [{"type": "value_error", "loc": ["body"], "msg": message, "input": None}]
        return web.json_response({"detail": detail}, status=422)
    kind = "invalid_request_error" if status < 500 else "internal_server_error"
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": None}
    return web.json_response(body, status=status)


def _not_found(message: str) -> web.HTTPNotFound:
    """A 404 with Mistral's error body, raised from a lookup."""
    body = {"object": "error", "message": message, "type": "invalid_request_error"}
    text = orjson.dumps(body | {"param": None, "code": None}).decode()
    return web.HTTPNotFound(text=text, content_type="application/json")


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[MISTRAL]
    auth = request.headers.get("Authorization")
    state.calls.append((request.method, request.path, auth))
    if auth != f"Bearer {state.api_key}":
        return error_response(401, "Unauthorized")
    return await faults.serve(
        state, request, lambda: handler(request), error=error_response, replayers=REPLAYERS
    )


def _file_object(file_id: str, name: str, size: int, lines: int, sample: str) -> Json:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": name,
        "purpose": "batch",
        "sample_type": sample,
        "num_lines": lines,
        "source": "upload" if sample == "batch_request" else "mistral",
    }


def _store(state: FakeMistralState, name: str, content: bytes, sample: str) -> Json:
    file_id = str(uuid.uuid4())
    lines = content.count(b"\n")
    state.files[file_id] = _file_object(file_id, name, len(content), lines, sample)
    state.contents[file_id] = content
    return state.files[file_id]


def _bad_line(raw: bytes) -> str | None:
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(line, dict) or set(line) != {"custom_id", "body"}:
        return "each line must be exactly {custom_id, body}"
    if not isinstance(line["body"], dict) or "model" in line["body"]:
        return "the model is set on the job, not in the body"
    return None


async def upload(request: web.Request) -> web.Response:
    state = request.app[MISTRAL]
    form = await request.post()
    item = form.get("file")
    if form.get("purpose") != "batch" or not isinstance(item, web.FileField):
        return error_response(422, "purpose must be batch and file a file")
    content = item.file.read()
    for number, raw in enumerate(content.splitlines(), 1):
        if raw.strip() and (problem := _bad_line(raw)):
            return error_response(400, f"Invalid file format at line {number}: {problem}")
    return web.json_response(_store(state, item.filename, content, "batch_request"))


def _file(request: web.Request) -> Json:
    found = request.app[MISTRAL].files.get(request.match_info["file_id"])
    if found is None:
        raise _not_found("File not found")
    return found


async def get_file(request: web.Request) -> web.Response:
    return web.json_response(_file(request))


async def delete_file(request: web.Request) -> web.Response:
    found = _file(request)
    del request.app[MISTRAL].files[found["id"]]
    return web.json_response({"id": found["id"], "object": "file", "deleted": True})


async def content(request: web.Request) -> web.StreamResponse:
    found = _file(request)
    body = request.app[MISTRAL].contents[found["id"]]
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    await response.prepare(request)
    half = len(body) // 2  # lines straddle chunks
    await response.write(body[:half])
    await response.write(body[half:])
    await response.write_eof()
    return response


async def list_files(request: web.Request) -> web.Response:
    files = list(request.app[MISTRAL].files.values())
    page, size = int(request.query.get("page", "0")), int(request.query.get("page_size", "100"))
    chunk = files[page * size : (page + 1) * size]
    return web.json_response({"data": chunk, "object": "list", "total": len(files)})


def _invalid_job(state: FakeMistralState, body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be an object"
    files = body.get("input_files")
    if not isinstance(files, list) or not files or any(f not in state.files for f in files):
        return "input_files: unknown file"
    if body.get("endpoint") not in ENDPOINTS:
        return "endpoint: not supported"
    if not isinstance(body.get("model"), str):
        return "model: required"
    if not isinstance(body.get("timeout_hours", 24), int):
        return "timeout_hours: must be an integer"
    metadata = body.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or any(not isinstance(v, str) for v in metadata.values())
    ):
        return "metadata: values must be strings"
    return None


async def create_job(request: web.Request) -> web.Response:
    return _create_job(request.app[MISTRAL], await request.read())


def _create_job(state: FakeMistralState, raw: bytes) -> web.Response:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_response(422, "the body is not JSON")
    if (problem := _invalid_job(state, body)) is not None:
        return error_response(422, problem)
    if body["model"] == UNKNOWN_MODEL:
        return error_response(400, f"Invalid model: {UNKNOWN_MODEL}")
    state.job_bodies.append(body)
    requests = [
        orjson.loads(raw)
        for f in body["input_files"]
        for raw in state.contents[f].splitlines()
        if raw.strip()
    ]
    return web.json_response(_public(_new_job(state, body, requests, int(time.time()))))


def _new_job(state: FakeMistralState, body: Json, requests: list[Json], created: int) -> Json:
    job_id = str(uuid.uuid4())
    state.jobs[job_id] = {
        "id": job_id,
        "object": "batch",
        "input_files": body["input_files"],
        "metadata": body.get("metadata"),
        "endpoint": body["endpoint"],
        "model": body["model"],
        "agent_id": None,
        "output_file": None,
        "error_file": None,
        "errors": [],
        "outputs": None,
        "status": "QUEUED",
        "created_at": created,
        "total_requests": len(requests),
        "completed_requests": 0,
        "succeeded_requests": 0,
        "failed_requests": 0,
        "started_at": None,
        "completed_at": None,
        "_requests": requests,
        "_polls": 0,
    }
    return state.jobs[job_id]


def _add_unrelated(state: FakeMistralState, created_at: int, tag: str | None) -> None:
    body = {"input_files": [], "endpoint": "/v1/chat/completions", "model": "mistral-small-latest"}
    if tag:
        body["metadata"] = {"gateway_batch_id": tag}
    _new_job(state, body, [], created_at)


def _public(job: Json) -> Json:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _result(job: Json, index: int, request: Json) -> tuple[bool, Json]:
    body = request["body"]
    line_id = f"batch-{job['id']}-{index}"
    messages = body.get("messages") or [{}]
    if messages[0].get("content") == "FAIL":
        error = {
            "object": "error",
            "message": f"Invalid request in job {job['id']}",
            "type": "invalid_request_error",
            "param": None,
            "code": "3051",
        }
        return False, {
            "id": line_id,
            "custom_id": request["custom_id"],
            "response": {"status_code": 400, "body": error},
            "error": None,
        }
    reply = {
        "id": secrets.token_hex(16),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": job["model"],
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": f"fake reply to {request['custom_id']} by {job['model']}",
                    "tool_calls": None,
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return True, {
        "id": line_id,
        "custom_id": request["custom_id"],
        "response": {"status_code": 200, "body": reply},
        "error": None,
    }


def _end(state: FakeMistralState, job: Json, status: str) -> None:
    ran = job["_requests"] if status == "SUCCESS" else job["_requests"][:1]
    good, bad = b"", b""
    for i, request in enumerate(ran):
        ok, line = _result(job, i, request)
        if ok:
            good += orjson.dumps(line) + b"\n"
        else:
            bad += orjson.dumps(line) + b"\n"
    if good:
        job["output_file"] = _store(state, f"{job['id']}.jsonl", good, "batch_result")["id"]
    if bad:
        job["error_file"] = _store(state, f"{job['id']}_error.jsonl", bad, "batch_error")["id"]
    job.update(
        status=status,
        completed_requests=len(ran),
        succeeded_requests=good.count(b"\n"),
        failed_requests=bad.count(b"\n"),
        completed_at=int(time.time()),
    )


def _job(request: web.Request) -> Json:
    job = request.app[MISTRAL].jobs.get(request.match_info["job_id"])
    if job is None:
        raise _not_found("Batch job not found")
    return job


async def get_job(request: web.Request) -> web.Response:
    state, job = request.app[MISTRAL], _job(request)
    if job["status"] == "CANCELLATION_REQUESTED":
        _end(state, job, "CANCELLED")
    elif job["status"] in ("QUEUED", "RUNNING"):
        job["_polls"] += 1
        job.update(status="RUNNING", started_at=job["started_at"] or int(time.time()))
        if job["_polls"] >= state.polls_to_end:
            _end(state, job, "TIMEOUT_EXCEEDED" if state.expire else "SUCCESS")
    return web.json_response(_public(job))


async def cancel_job(request: web.Request) -> web.Response:
    job = _job(request)
    _cancel(job)
    return web.json_response(_public(job))


def _cancel(job: Json) -> None:
    if job["status"] in ("QUEUED", "RUNNING"):
        job["status"] = "CANCELLATION_REQUESTED"


async def list_jobs(request: web.Request) -> web.Response:
    """Newest first (`order_by=-created`), `page` / `page_size`, `created_after`."""
    state, query = request.app[MISTRAL], request.query
    page, size = int(query.get("page", "0")), int(query.get("page_size", "100"))
    if query.get("order_by", "-created") != "-created":
        return error_response(422, "this fake lists newest first only")
    jobs = list(reversed(state.jobs.values()))
    if after := query.get("created_after"):
        cutoff = datetime.fromisoformat(after).timestamp()
        jobs = [j for j in jobs if j["created_at"] >= cutoff]
    chunk = jobs[page * size : (page + 1) * size]
    return web.json_response(
        {"data": [_public(j) for j in chunk], "object": "list", "total": len(jobs)}
    )


def _replay_create(state: FakeMistralState, call: Captured) -> None:
    _create_job(state, call.body)


def _replay_cancel(state: FakeMistralState, call: Captured) -> None:
    if (job := state.jobs.get(call.match_info["job_id"])) is not None:
        _cancel(job)


REPLAYERS: dict[str, Replayer[FakeMistralState]] = {
    "POST /v1/batch/jobs": _replay_create,
    "POST /v1/batch/jobs/{job_id}/cancel": _replay_cancel,
}


def make_mistral_upstream(api_key: str, **state_options: Any) -> web.Application:
    app = web.Application(middlewares=[_gate])
    state = app[MISTRAL] = FakeMistralState(api_key=api_key, **state_options)
    app.cleanup_ctx.append(faults.lifecycle(state, lambda at, tag: _add_unrelated(state, at, tag)))
    app.add_routes(
        [
            web.post("/v1/files", upload),
            web.get("/v1/files", list_files),
            web.get("/v1/files/{file_id}", get_file),
            web.delete("/v1/files/{file_id}", delete_file),
            web.get("/v1/files/{file_id}/content", content),
            web.post("/v1/batch/jobs", create_job),
            web.get("/v1/batch/jobs", list_jobs),
            web.get("/v1/batch/jobs/{job_id}", get_job),
            web.post("/v1/batch/jobs/{job_id}/cancel", cancel_job),
        ]
    )
    return app
