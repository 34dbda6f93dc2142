"""A fake Azure OpenAI Batch upstream (Files + Batch, both URL styles): a real aiohttp app.

Use it with pytest-aiohttp::

    server = await aiohttp_server(make_azure_upstream(api_key="k", deployments={"dep"}))
    base_url = str(server.make_url(""))          # the resource endpoint
    state = server.app[AZURE]

It checks what Azure checks: the `api-key` header (or, with `token`, an Entra ID bearer
token), the `api-version` query on every call (`api_style="classic"`: under `/openai`,
`api_version` required; `"v1"`: under `/openai/v1`, no version unless `api_version` is
set), `purpose=batch`, a create's `endpoint` written as Azure's docs write it
(`/chat/completions`), a `processed` input file, and, at validation, each line's url and
`body.model` (a known deployment, the same on every line). Answers are in Azure's shapes:
uploads answer 201 `pending` (classic) and turn `processed` after `pending_polls` reads;
error bodies are `{"error": {"code", "message"}}` with Azure's codes (`"401"`, `"429"`,
`notFound`, `token_limit_exceeded`), a refused bearer token `{"statusCode", "message"}`.

Batches advance one step per `GET`: validating -> in_progress -> finalizing -> completed
(cancel: cancelling -> cancelled). Lines whose `custom_id` starts with `filtered-` fail
with Azure's content-filter error; output lines carry `content_filter_results`. A
completed batch always has an error file, empty when nothing failed (as Azure does).
`never_end` keeps batches `in_progress` (Azure does not expire jobs past 24 h);
`doc_quirks` renders batches as Azure's REST examples do (ISO timestamps, "Validating").
Faults (`fail_next`, `fail_on`, ...) come from `tests.fakes.faults`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler

from tests.fakes import faults
from tests.fakes.faults import Captured, FaultState, Ledger, Replayer

Json = dict[str, Any]
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
TIMESTAMPS = (
    *("in_progress_at", "expires_at", "finalizing_at", "completed_at"),
    *("failed_at", "expired_at", "cancelling_at", "cancelled_at"),
)
KEY_REFUSED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide"
    " a valid key for an active subscription and use a correct regional API endpoint for your"
    " resource."
)
TOKEN_REFUSED = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect"
    " (https://cognitiveservices.azure.com), or have expired."
)
# Azure's ErrorCode names (2024-10-21 spec) by status; 401/429 come from its gateway as digits.
_CODES = {400: "invalidPayload", 401: "401", 403: "forbidden", 404: "notFound", 409: "conflict"}
_CODES |= {429: "429", 500: "internalFailure", 503: "serviceUnavailable"}


@dataclass
class FakeAzureState(FaultState):
    api_key: str | None = None
    token: str | None = None
    api_style: Literal["classic", "v1"] = "classic"
    api_version: str | None = "2024-10-21"
    deployments: frozenset[str] = frozenset()
    pending_polls: int = 1
    file_outcome: Literal["processed", "error"] = "processed"
    never_end: bool = False
    doc_quirks: bool = False
    token_limit_creates: int = 0
    files: Ledger = field(default_factory=Ledger)
    batches: Ledger = field(default_factory=Ledger)
    # (method, path, query string) of every request, and each one's credential header.
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    credentials: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return "/openai/v1" if self.api_style == "v1" else "/openai"

    @property
    def line_url(self) -> str:
        """What the docs of this style write in each input line."""
        return "/v1/chat/completions" if self.api_style == "v1" else "/chat/completions"


AZURE = web.AppKey("azure", FakeAzureState)


class AzureError(Exception):
    """Raised by handlers; answered with Azure's error body."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.response = azure_error(status, message, code)


def azure_error(status: int, message: str, code: str | None = None) -> web.Response:
    headers = {"Retry-After": "0"} if status == 429 else None
    if status == 429:
        message += (
            " Requests to the Batch_Create Operation under Azure OpenAI API version 2024-10-21"
            " have exceeded call rate limit of your current OpenAI S0 pricing tier. Please go"
            " here: https://aka.ms/oai/quotaincrease if you would like to further increase the"
            " default rate limit."
        )
    body = {"error": {"code": code or _CODES.get(status, "internalFailure"), "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _now() -> int:
    return int(time.time())


def _public(obj: Json) -> Json:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[AZURE]
    state.requests.append((request.method, request.path, request.query_string))
    if state.token is not None:
        seen = request.headers.get("Authorization", "")
        state.credentials.append(seen)
        if seen != f"Bearer {state.token}":
            return web.json_response({"statusCode": 401, "message": TOKEN_REFUSED}, status=401)
    else:
        seen = request.headers.get("api-key", "")
        state.credentials.append(seen)
        if seen != state.api_key or "Authorization" in request.headers:
            return azure_error(401, KEY_REFUSED)
    if request.query.get("api-version") != state.api_version:
        return azure_error(400, "API version not supported", "BadRequest")
    if not request.path.startswith(state.prefix + "/"):
        return azure_error(404, "Resource not found", "404")

    async def run() -> web.StreamResponse:
        try:
            return await handler(request)
        except AzureError as exc:
            return exc.response

    return await faults.serve(state, request, run, error=azure_error, replayers=REPLAYERS)


def _new_file(state: FakeAzureState, content: bytes, filename: str, purpose: str) -> Json:
    file_id = "file-" + uuid.uuid4().hex if purpose == "batch" else f"file-{uuid.uuid4()}"
    ready = purpose != "batch" or state.api_style == "v1" or state.pending_polls == 0
    state.files[file_id] = {
        "status": "processed" if ready else "pending",
        "bytes": len(content),
        "purpose": purpose,
        "filename": filename,
        "id": file_id,
        "created_at": _now(),
        "object": "file",
        "_content": content,
        "_pending": 0 if ready else state.pending_polls,
    }
    return state.files[file_id]


async def upload_file(request: web.Request) -> web.Response:
    state = request.app[AZURE]
    fields: dict[str, str] = {}
    content, filename = None, "upload.jsonl"
    async for part in await request.multipart():
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name == "file":
            content, filename = await part.read(), part.filename or filename
        else:
            fields[part.name] = await part.text()
    if content is None or fields.get("purpose") != "batch":
        raise AzureError(400, "A file and purpose 'batch' are required.")
    return web.json_response(
        _public(_new_file(state, bytes(content), filename, "batch")), status=201
    )


def _file(request: web.Request) -> Json:
    file_id = request.match_info["file_id"]
    if (stored := request.app[AZURE].files.get(file_id)) is None:
        raise AzureError(404, f"File with id {file_id} not found.")
    return stored


async def retrieve_file(request: web.Request) -> web.Response:
    state, stored = request.app[AZURE], _file(request)
    if stored["status"] == "pending":
        if stored["_pending"] > 0:
            stored["_pending"] -= 1
        else:
            stored["status"] = state.file_outcome
            if state.file_outcome == "error":
                stored["status_details"] = (
                    f"Validation of {stored['id']} failed: line 2 is not valid JSON."
                )
    return web.json_response(_public(stored))


async def file_content(request: web.Request) -> web.Response:
    return web.Response(body=_file(request)["_content"], content_type="application/octet-stream")


async def delete_file(request: web.Request) -> web.Response:
    stored = _file(request)
    del request.app[AZURE].files[stored["id"]]
    return web.json_response({"object": "file", "deleted": True, "id": stored["id"]})


async def list_files(request: web.Request) -> web.Response:
    """Classic (2024-10-21): `purpose` only, one page. v1: OpenAI's paging."""
    state, query = request.app[AZURE], request.query
    purpose = query.get("purpose")
    keep = (lambda f: f["purpose"] == purpose) if purpose else None
    if state.api_style == "classic":
        if set(query) - {"purpose", "api-version"}:
            raise AzureError(400, "Unsupported query parameter for this api-version.")
        page = [_public(f) for f in state.files.values() if keep is None or keep(f)]
        return web.json_response({"object": "list", "data": page})
    limit = int(query.get("limit", "10000"))
    newest_first = query.get("order", "desc") == "desc"
    found, more = state.files.page(
        limit, after=query.get("after"), newest_first=newest_first, keep=keep
    )
    return web.json_response(_list([_public(f) for f in found], more))


def _list(page: list[Json], has_more: bool) -> Json:
    first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return {
        "object": "list",
        "data": page,
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
    }


def _render(state: FakeAzureState, batch: Json) -> Json:
    out = _public(batch)
    if state.doc_quirks:  # as the REST examples show them
        out["status"] = out["status"].capitalize()
        for name in ("created_at", *TIMESTAMPS):
            if isinstance(out.get(name), int):
                out[name] = datetime.fromtimestamp(out[name], UTC).isoformat()
    return out


def _create(state: FakeAzureState, raw: bytes) -> Json:
    body = json.loads(raw)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise AzureError(400, f"Missing required parameter: '{name}'.")
    if body["endpoint"] not in ("/chat/completions", "/responses", "/embeddings"):
        raise AzureError(400, f"Unsupported endpoint {body['endpoint']}.")
    if body["completion_window"] != "24h":
        raise AzureError(400, "completion_window must be 24h.")
    if "output_expires_after" in body and state.api_style == "classic":
        raise AzureError(400, "Unknown property 'output_expires_after'.")
    file = state.files.get(body["input_file_id"])
    if file is None:
        raise AzureError(404, f"File with id {body['input_file_id']} not found.")
    if file["status"] != "processed":
        raise AzureError(
            400,
            f"The input file '{file['id']}' is in '{file['status']}' state. Only files with"
            " status 'Processed' are accepted for batch inferencing. Please check the file"
            " status and try again",
            "invalid_request",
        )
    if state.token_limit_creates > 0:
        state.token_limit_creates -= 1
        raise AzureError(
            400, "Enqueued token limit reached for this deployment.", "token_limit_exceeded"
        )
    created = _now()
    batch: Json = {
        "id": f"batch_{uuid.uuid4()}",
        "object": "batch",
        "endpoint": body["endpoint"],
        "errors": None,
        "input_file_id": file["id"],
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        **dict.fromkeys(TIMESTAMPS),
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
    }
    batch["expires_at"] = created + 86_400
    state.batches[batch["id"]] = batch
    return batch


async def create_batch(request: web.Request) -> web.Response:
    state = request.app[AZURE]
    return web.json_response(_render(state, _create(state, await request.read())))


def _validate(state: FakeAzureState, lines: list[Json]) -> Json | None:
    """The first problem Azure's validation reports, as a BatchErrorData (line: string)."""
    first_model = lines[0]["body"].get("model") if lines else None
    for number, line in enumerate(lines, start=1):
        model = line.get("body", {}).get("model")
        if line.get("url") != state.line_url:
            code, message = "url_mismatch", "The URL doesn't match the expected endpoint URL."
        elif model not in state.deployments:
            code, message = "model_not_found", f"The deployment {model} was not found."
        elif model != first_model:
            code, message = "model_mismatch", "The deployment doesn't match the rest of the file."
        else:
            continue
        return {"code": code, "message": message, "param": None, "line": str(number)}
    return None


def _result(line: Json) -> str:
    custom_id = line["custom_id"]
    if str(custom_id).startswith("filtered-"):
        error = {
            "code": "content_filter",
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's"
            " content management policy.",
            "param": "prompt",
            "type": None,
            "innererror": {"code": "ResponsibleAIPolicyViolation"},
        }
        response = {"body": {"error": error}, "request_id": str(uuid.uuid4()), "status_code": 400}
        return json.dumps({"custom_id": custom_id, "response": response, "error": None})
    safe = {"filtered": False, "severity": "safe"}
    filters = {k: safe for k in ("hate", "self_harm", "sexual", "violence")}
    body = {
        "choices": [
            {
                "content_filter_results": filters,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"content": f"answer to {custom_id}", "role": "assistant"},
            }
        ],
        "created": _now(),
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "model": "gpt-4o-2024-08-06",
        "object": "chat.completion",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}],
        "system_fingerprint": "fp_a9bfe9d51d",
        "usage": {"completion_tokens": 5, "prompt_tokens": 10, "total_tokens": 15},
    }
    response = {"body": body, "request_id": str(uuid.uuid4()), "status_code": 200}
    return json.dumps({"custom_id": custom_id, "response": response, "error": None})


def _finish(state: FakeAzureState, batch: Json) -> None:
    ok, failed = [], []
    for line in batch["_lines"]:
        (failed if str(line["custom_id"]).startswith("filtered-") else ok).append(_result(line))
    for key, lines in (("output_file_id", ok), ("error_file_id", failed)):
        content = "".join(f"{line}\n" for line in lines).encode()
        name = f"{batch['id']}_{key.removesuffix('_file_id')}.jsonl"
        batch[key] = _new_file(state, content, name, "batch_output")["id"]
    batch["request_counts"] = {"total": len(ok) + len(failed), "completed": len(ok)}
    batch["request_counts"]["failed"] = len(failed)


def _advance(state: FakeAzureState, batch: Json) -> None:
    status = batch["status"]
    if status == "validating":
        content = state.files[batch["input_file_id"]]["_content"]
        lines = [json.loads(raw) for raw in content.splitlines() if raw.strip()]
        if problem := _validate(state, lines):
            batch.update(status="failed", failed_at=_now())
            batch["errors"] = {"object": "list", "data": [problem]}
            return
        batch["_lines"] = lines
        batch["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
        batch.update(status="in_progress", in_progress_at=_now())
    elif status == "in_progress" and not state.never_end:
        batch.update(status="finalizing", finalizing_at=_now())
    elif status == "finalizing":
        _finish(state, batch)
        batch.update(status="completed", completed_at=_now())
    elif status == "cancelling":
        batch.update(status="cancelled", cancelled_at=_now())


def _batch(request: web.Request) -> Json:
    batch_id = request.match_info["batch_id"]
    if (batch := request.app[AZURE].batches.get(batch_id)) is None:
        raise AzureError(404, f"Batch with id {batch_id} not found.")
    return batch


async def retrieve_batch(request: web.Request) -> web.Response:
    state, batch = request.app[AZURE], _batch(request)
    _advance(state, batch)
    return web.json_response(_render(state, batch))


def _cancel(batch: Json) -> None:
    if batch["status"] in TERMINAL:
        raise AzureError(409, f"Batch {batch['id']} is already {batch['status']}.")
    if batch["status"] != "cancelling":
        batch.update(status="cancelling", cancelling_at=_now())


async def cancel_batch(request: web.Request) -> web.Response:
    state, batch = request.app[AZURE], _batch(request)
    _cancel(batch)
    return web.json_response(_render(state, batch))


async def list_batches(request: web.Request) -> web.Response:
    state = request.app[AZURE]
    limit = int(request.query.get("limit", "20"))
    if not 1 <= limit <= 100:
        raise AzureError(400, "limit must be between 1 and 100.")
    page, more = state.batches.page(limit, after=request.query.get("after") or None)
    return web.json_response(_list([_render(state, b) for b in page], more))


def _replay_create(state: FakeAzureState, call: Captured) -> None:
    try:
        _create(state, call.body)
    except AzureError:
        pass


def _replay_cancel(state: FakeAzureState, call: Captured) -> None:
    batch = state.batches.get(call.match_info["batch_id"])
    if batch is not None and batch["status"] not in TERMINAL:
        _cancel(batch)


REPLAYERS: dict[str, Replayer[FakeAzureState]] = {
    f"{method} {prefix}{path}": replay
    for prefix in ("/openai", "/openai/v1")
    for method, path, replay in (
        ("POST", "/batches", _replay_create),
        ("POST", "/batches/{batch_id}/cancel", _replay_cancel),
    )
}


def make_azure_upstream(**state_options: Any) -> web.Application:
    """The fake; `state_options` are FakeAzureState fields (api_key or token, api_style,
    api_version, deployments, pending_polls, ...)."""
    app = web.Application(middlewares=[_gate])
    state = app[AZURE] = FakeAzureState(**state_options)
    if state.api_style == "v1" and "api_version" not in state_options:
        state.api_version = None
    app.cleanup_ctx.append(faults.lifecycle(state, lambda at, tag: None))
    for prefix in ("/openai", "/openai/v1"):
        app.add_routes(
            [
                web.post(f"{prefix}/files", upload_file),
                web.get(f"{prefix}/files", list_files),
                web.get(f"{prefix}/files/{{file_id}}", retrieve_file),
                web.delete(f"{prefix}/files/{{file_id}}", delete_file),
                web.get(f"{prefix}/files/{{file_id}}/content", file_content),
                web.post(f"{prefix}/batches", create_batch),
                web.get(f"{prefix}/batches", list_batches),
                web.get(f"{prefix}/batches/{{batch_id}}", retrieve_batch),
                web.post(f"{prefix}/batches/{{batch_id}}/cancel", cancel_batch),
            ]
        )
    return app
