"""A fake Vertex AI (batch prediction jobs) and Google OAuth token endpoint: a real aiohttp
app, reading and writing its files in a real Cloud Storage emulator.

    key = service_account_key("my-project")
    server = await aiohttp_server(make_vertex_upstream(storage_url, key, project="my-project"))
    key_file = key.write(tmp_path, str(server.make_url("/token")))
    state = server.app[VERTEX]

Auth as Google does it: `POST /token` takes a service account's signed JWT assertion
(`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`), verifies its signature with the
key's public half (google.auth.jwt), its issuer, audience and cloud-platform scope, and
issues a short-lived access token; every job call needs `Authorization: Bearer <token>`
(else 401 UNAUTHENTICATED). `revoke_tokens()` makes the issued ones invalid.

Jobs (`/v1/projects/{p}/locations/{l}/batchPredictionJobs`): create checks the body
(displayName, a `publishers/google/models/` model, jsonl `gcsSource.uris`, a jsonl
`gcsDestination.outputUriPrefix`, label keys and values in Google's label alphabet) and
answers the job JOB_STATE_PENDING; list honours `create_time>="…"` filters and pages
(`page_size` items a page); get answers the job, which moves on at each get: the first
reads the input from Cloud Storage and checks it as Vertex does (JSONL, every line
`{"request": GenerateContentRequest}`; a bad file, or any with `fail_jobs`, fails the job
with an error naming its gs:// URI and the job), then after `polls_to_end` gets the
predictions are written to `<outputUriPrefix>/prediction-model-<time>/predictions.jsonl`,
shuffled, each line echoing its request: a request whose text holds FAIL gets an error
`status` (Google's error body in it, naming the project and bucket for the tests to see
scrubbed), a request with tools a functionCall, others `fake reply to <line label>`.
A text-embedding job reads `{"content"}` instances and answers `{"instance",
"predictions": [{"embeddings": {"statistics", "values"}}], "status"}` lines.
`:cancel` makes a running job CANCELLING; the next get ends it CANCELLED with only the
first line run. Errors are google.rpc.Status
bodies `{"error": {"code", "message", "status"}}`; faults come from `tests.fakes.faults`.
"""

from __future__ import annotations

import functools
import json
import random
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from tests.fakes import faults
from tests.fakes.faults import FaultState, Ledger
from tests.servers import free_port

Json = dict[str, Any]

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_LABEL = re.compile(r"[a-z0-9_-]{0,63}")
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_GS = re.compile(r"gs://([^/]+)/(.+)")
_REQUEST_KEYS = {
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "labels",
    "safetySettings",
}


@dataclass(frozen=True)
class ServiceAccountKey:
    """A service account's RSA key; `write` makes its key file for a token endpoint."""

    private_pem: str
    public_pem: str
    email: str
    project: str

    def write(self, folder: Path, token_uri: str) -> Path:
        info = {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": secrets.token_hex(20),
            "private_key": self.private_pem,
            "client_email": self.email,
            "client_id": str(random.randrange(10**20, 10**21)),
            "token_uri": token_uri,
        }
        path = folder / "service-account.json"
        path.write_text(json.dumps(info))
        return path


@functools.cache
def service_account_key(project: str) -> ServiceAccountKey:
    """A fresh 2048-bit RSA key (made once per project name and test session)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return ServiceAccountKey(
        private, public, f"batch-gateway@{project}.iam.gserviceaccount.com", project
    )


@dataclass
class FakeVertexState(FaultState):
    project: str
    location: str
    storage_url: str
    public_pem: str
    email: str
    jobs: Ledger = field(default_factory=Ledger)
    tokens: set[str] = field(default_factory=set)
    token_requests: int = 0
    # Every job call as (method, path with query, bearer token or None).
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)
    polls_to_end: int = 2
    page_size: int = 2
    shuffle_seed: int = 7
    # Jobs fail as a whole at their first get (as a bad input file fails them).
    fail_jobs: bool = False
    _session: aiohttp.ClientSession | None = None

    def revoke_tokens(self) -> None:
        self.tokens.clear()


VERTEX = web.AppKey("vertex", FakeVertexState)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def error_response(status: int, message: str) -> web.Response:
    error = {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN")}
    return web.json_response({"error": error}, status=status)


# --- OAuth ---------------------------------------------------------------------------


async def token(request: web.Request) -> web.Response:
    state = request.app[VERTEX]
    form = await request.post()
    if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    assertion = form.get("assertion")
    try:
        claims = jwt.decode(str(assertion), certs=state.public_pem, audience=GOOGLE_TOKEN_AUDIENCE)
    except (ValueError, TypeError) as exc:
        body = {"error": "invalid_grant", "error_description": f"Invalid JWT Signature. {exc}"}
        return web.json_response(body, status=400)
    if claims.get("iss") != state.email or SCOPE not in str(claims.get("scope", "")).split():
        return web.json_response({"error": "invalid_scope"}, status=400)
    issued = f"ya29.fake-{secrets.token_urlsafe(24)}"
    state.tokens.add(issued)
    state.token_requests += 1
    return web.json_response({"access_token": issued, "expires_in": 3599, "token_type": "Bearer"})


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/token":
        return await handler(request)
    state = request.app[VERTEX]
    auth = request.headers.get("Authorization", "")
    bearer = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
    state.calls.append((request.method, request.path_qs, bearer))
    if bearer is None or bearer not in state.tokens:
        message = (
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            f"login cookie or other valid authentication credential. ({bearer})"
        )
        return error_response(401, message)
    if request.match_info.get("project") != state.project:
        return error_response(403, f"Permission denied on project {request.match_info['project']}")
    return await faults.serve(
        state, request, lambda: handler(request), error=error_response, replayers={}
    )


# --- Cloud Storage, as Vertex's service agent sees it -----------------------------------


def _gcs(state: FakeVertexState) -> aiohttp.ClientSession:
    if state._session is None or state._session.closed:
        state._session = aiohttp.ClientSession()
    return state._session


async def _read_object(state: FakeVertexState, uri: str) -> bytes | None:
    match = _GS.fullmatch(uri)
    if match is None:
        return None
    bucket, name = match.groups()
    url = f"{state.storage_url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
    async with _gcs(state).get(url) as resp:
        return await resp.read() if resp.status == 200 else None


async def _write_object(state: FakeVertexState, uri: str, data: bytes) -> None:
    match = _GS.fullmatch(uri)
    assert match is not None
    bucket, name = match.groups()
    query = urlencode({"uploadType": "media", "name": name})
    url = f"{state.storage_url}/upload/storage/v1/b/{bucket}/o?{query}"
    # Not application/json*: the emulator would parse such a body as one JSON document.
    headers = {"Content-Type": "application/octet-stream"}
    async with _gcs(state).post(url, data=data, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


# --- jobs ----------------------------------------------------------------------------


def _check_create(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("displayName"), str):
        return "displayName is required."
    model = str(body.get("model", ""))
    if not re.fullmatch(r"publishers/google/models/(gemini-|text-embedding-)[\w.@-]+", model):
        return f"Model {body.get('model')} is not supported for batch prediction."
    source = body.get("inputConfig") or {}
    uris = (source.get("gcsSource") or {}).get("uris")
    if source.get("instancesFormat") != "jsonl" or not (
        isinstance(uris, list) and len(uris) == 1 and _GS.fullmatch(str(uris[0]))
    ):
        return "inputConfig must be jsonl with one gcsSource uri."
    target = body.get("outputConfig") or {}
    prefix = (target.get("gcsDestination") or {}).get("outputUriPrefix")
    if target.get("predictionsFormat") != "jsonl" or not _GS.fullmatch(str(prefix)):
        return "outputConfig must be jsonl with a gcsDestination outputUriPrefix."
    for key, value in (body.get("labels") or {}).items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL.fullmatch(str(value)):
            return f"Label {key}={value} is invalid: use lowercase letters, digits, _ and -."
    return None


async def create_job(request: web.Request) -> web.Response:
    state = request.app[VERTEX]
    body = await request.json()
    if problem := _check_create(body):
        return error_response(400, problem)
    job_id = str(random.randrange(10**18, 10**19))
    name = f"projects/{state.project}/locations/{state.location}/batchPredictionJobs/{job_id}"
    now = _now()
    job = {
        "name": name,
        "displayName": body["displayName"],
        "model": body["model"],
        "inputConfig": body["inputConfig"],
        "outputConfig": body["outputConfig"],
        "state": "JOB_STATE_PENDING",
        "createTime": now,
        "updateTime": now,
        "labels": body.get("labels") or {},
        "modelVersionId": "1",
    }
    state.jobs[job_id] = job | {"_polls": 0, "_lines": None}
    return web.json_response(_public(state.jobs[job_id]))


def _public(job: Json) -> Json:
    return {k: v for k, v in job.items() if not k.startswith("_")}


async def list_jobs(request: web.Request) -> web.Response:
    state = request.app[VERTEX]
    jobs = list(state.jobs.values())[::-1]  # newest first
    wanted = request.query.get("filter", "")
    if wanted:
        match = re.fullmatch(r'create_time>="([^"]+)"', wanted)
        if match is None:
            return error_response(400, f"Unsupported filter {wanted}")
        since = datetime.fromisoformat(match.group(1))
        jobs = [j for j in jobs if datetime.fromisoformat(j["createTime"]) >= since]
    start = int(request.query.get("pageToken") or 0)
    size = min(int(request.query.get("pageSize") or 100), state.page_size)
    page: Json = {"batchPredictionJobs": [_public(j) for j in jobs[start : start + size]]}
    if start + size < len(jobs):
        page["nextPageToken"] = str(start + size)
    return web.json_response(page)


def _job_or_404(request: web.Request) -> Json | web.Response:
    state = request.app[VERTEX]
    job_id = request.match_info["spec"].partition(":")[0]
    job = state.jobs.get(job_id)
    if job is None:
        return error_response(404, f"BatchPredictionJob {job_id} does not exist.")
    return job


async def get_job(request: web.Request) -> web.Response:
    found = _job_or_404(request)
    if isinstance(found, web.Response):
        return found
    await _advance(request.app[VERTEX], found)
    return web.json_response(_public(found))


async def cancel_job(request: web.Request) -> web.Response:
    found = _job_or_404(request)
    if isinstance(found, web.Response):
        return found
    if not request.match_info["spec"].endswith(":cancel"):
        return error_response(404, "unknown method")
    if found["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
        return error_response(400, f"Job {found['name']} is already in a final state.")
    found["state"], found["updateTime"] = "JOB_STATE_CANCELLING", _now()
    return web.json_response({})


def _check_instances(data: bytes) -> tuple[list[Json], str | None]:
    """Text-embedding instances: `{"content": text}` (task_type and title optional)."""
    lines = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = orjson.loads(raw)
        if not isinstance(line, dict) or not isinstance(line.get("content"), str):
            return [], f"line {number} must be an object with a content string"
        if set(line) - {"content", "task_type", "title"}:
            return [], f"line {number} has unknown fields"
        lines.append(line)
    return lines, None


def _check_lines(data: bytes, embeddings: bool) -> tuple[list[Json], str | None]:
    if data.lstrip().startswith(b"["):
        return [], "the input must be JSONL, not a JSON array"
    try:
        for raw in data.splitlines():
            orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [], "a line is not valid JSON"
    if embeddings:
        return _check_instances(data)
    lines = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = orjson.loads(raw)
        if not isinstance(line, dict) or set(line) != {"request"}:
            return [], f"line {number} must be an object with a request field"
        request = line["request"]
        unknown = set(request) - _REQUEST_KEYS if isinstance(request, dict) else {"?"}
        if unknown or not request.get("contents"):
            return [], f"line {number}: invalid GenerateContentRequest fields {sorted(unknown)}"
        for key, value in (request.get("labels") or {}).items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL.fullmatch(str(value)):
                return [], f"line {number}: invalid label {key}"
        lines.append(request)
    return lines, None


async def _advance(state: FakeVertexState, job: Json) -> None:
    if job["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
        return
    job["_polls"] += 1
    if job["_lines"] is None:
        uri = job["inputConfig"]["gcsSource"]["uris"][0]
        data = await _read_object(state, uri)
        embeddings = "embedding" in job["model"]
        lines, problem = (
            _check_lines(data, embeddings) if data is not None else ([], "it can't be read")
        )
        if state.fail_jobs:
            problem = "the service agent lacks storage.objects.get on it"
        if problem is not None:
            message = f"Failed to import data from {uri} for {job['name']}: {problem}."
            _end(job, "JOB_STATE_FAILED", error={"code": 3, "message": message})
            return
        job["_lines"] = lines
        if job["state"] == "JOB_STATE_PENDING":
            job["state"], job["startTime"] = "JOB_STATE_RUNNING", _now()
    if job["state"] == "JOB_STATE_CANCELLING":
        await _finish(state, job, job["_lines"][:1], "JOB_STATE_CANCELLED")
    elif job["_polls"] >= state.polls_to_end:
        await _finish(state, job, job["_lines"], "JOB_STATE_SUCCEEDED")


def _end(job: Json, final: str, error: Json | None = None) -> None:
    job["state"], job["endTime"] = final, _now()
    job["updateTime"] = job["endTime"]
    job["startTime"] = job.get("startTime") or job["endTime"]
    if error is not None:
        job["error"] = error


def _embed(instance: Json) -> Json:
    text = instance["content"]
    if "FAIL" in text:
        error = {
            "code": 400,
            "message": "The content is empty or too long.",
            "status": "INVALID_ARGUMENT",
        }
        return {"instance": instance, "status": "Bad Request: " + json.dumps({"error": error})}
    values = [len(text) / 100, -0.25, 0.125]
    statistics = {"token_count": float(len(text.split())), "truncated": False}
    prediction = {"embeddings": {"statistics": statistics, "values": values}}
    return {"instance": instance, "predictions": [prediction], "status": ""}


def _answer(state: FakeVertexState, request: Json, job: Json, bucket: str) -> Json:
    processed = _now()
    if "content" in request:
        return _embed(request)
    text = orjson.dumps(request["contents"]).decode()
    if "FAIL" in text:
        error = {
            "code": 400,
            "message": (
                f"Unable to process {job['name']} in projects/{state.project}: "
                f"content of gs://{bucket}/x is invalid (FAIL)"
            ),
            "status": "INVALID_ARGUMENT",
        }
        status = "Bad Request: " + json.dumps({"error": error})
        return {"status": status, "processed_time": processed, "request": request}
    label = next(iter((request.get("labels") or {"": "?"}).values()))
    parts: list[Json] = [{"text": f"fake reply to {label}"}]
    if request.get("tools"):
        function = request["tools"][0]["functionDeclarations"][0]["name"]
        parts = [{"functionCall": {"name": function, "args": {"city": "Paris"}}}]
    response = {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": "STOP",
                "avgLogprobs": -0.1,
            }
        ],
        "modelVersion": job["model"].rpartition("/")[2] + "@default",
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "createTime": processed,
        "responseId": secrets.token_hex(8),
    }
    return {"status": "", "processed_time": processed, "request": request, "response": response}


async def _finish(state: FakeVertexState, job: Json, lines: list[Json], final: str) -> None:
    prefix = job["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
    bucket = _GS.fullmatch(prefix + "/x").group(1)  # type: ignore[union-attr]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    folder = f"{prefix}/prediction-model-{stamp}"
    answers = [_answer(state, request, job, bucket) for request in lines]
    random.Random(state.shuffle_seed).shuffle(answers)  # Vertex keeps no order
    if answers:
        data = b"".join(orjson.dumps(a) + b"\n" for a in answers)
        await _write_object(state, f"{folder}/predictions.jsonl", data)
    failed = sum(1 for a in answers if a["status"])
    total = len(job["_lines"] or [])
    job["completionStats"] = {
        "successfulCount": str(len(answers) - failed),
        "failedCount": str(failed),
        "incompleteCount": str(total - len(answers)),
    }
    job["outputInfo"] = {"gcsOutputDirectory": folder}
    _end(job, final)


def make_vertex_upstream(
    storage_url: str,
    key: ServiceAccountKey,
    *,
    project: str,
    location: str = "us-central1",
    **options: Any,
) -> web.Application:
    app = web.Application(middlewares=[_gate])
    state = FakeVertexState(
        project=project,
        location=location,
        storage_url=storage_url.rstrip("/"),
        public_pem=key.public_pem,
        email=key.email,
        **options,
    )
    app[VERTEX] = state

    async def close_session(app: web.Application) -> Any:
        yield
        if state._session is not None:
            await state._session.close()

    app.cleanup_ctx.append(close_session)
    app.router.add_post("/token", token)
    base = "/v1/projects/{project}/locations/{location}/batchPredictionJobs"
    app.router.add_post(base, create_job)
    app.router.add_get(base, list_jobs)
    app.router.add_get(base + "/{spec}", get_job)
    app.router.add_post(base + "/{spec}", cancel_job)
    return app


# --- the Cloud Storage emulator --------------------------------------------------------


@dataclass
class StorageEmulator:
    """`gcp-storage-emulator` in a subprocess on loopback, in memory."""

    process: subprocess.Popen[bytes]
    url: str

    @classmethod
    def start(cls) -> StorageEmulator:
        port = free_port()
        command = [sys.executable, "-m", "gcp_storage_emulator", "start"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=1) as answer:
                    if answer.status == 200:
                        return cls(process, url)
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the Cloud Storage emulator did not start")
            time.sleep(0.05)

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(
            self.url + "/storage/v1/b",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix`, read behind the gateway's back."""
        query = urlencode({"prefix": prefix})
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}") as answer:
            items = json.loads(answer.read()).get("items") or []
        found = {}
        for item in items:
            name = quote(item["name"], safe="")
            with urllib.request.urlopen(
                f"{self.url}/storage/v1/b/{bucket}/o/{name}?alt=media"
            ) as got:
                found[item["name"]] = got.read()
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
