"""A fake Amazon Bedrock control plane for batch inference: a real aiohttp app whose jobs
read their input from, and write their output to, a real S3 API (moto's server).

    server = await aiohttp_server(make_bedrock_upstream(KEYS, s3=s3_settings))
    endpoint_url = str(server.make_url(""))
    state = server.app[BEDROCK]

Every call must carry a valid SigV4 signature (`Authorization: AWS4-HMAC-SHA256
Credential=<key>/<date>/<region>/bedrock/aws4_request, SignedHeaders=..., Signature=...`
and `X-Amz-Date`): the fake recomputes it with botocore's SigV4Auth and the known secret.
Errors are Bedrock's: `{"message": ...}` with the `x-amzn-ErrorType` header.

The REST routes and shapes are the API reference's: CreateModelInvocationJob (POST
/model-invocation-job; the same `clientRequestToken` gets the same job back),
GetModelInvocationJob, StopModelInvocationJob, ListModelInvocationJobs (newest first,
`page_size` per page, filtered by `nameContains`, `submitTimeAfter`, `statusEquals`).
Tags are kept but, as in Bedrock, not listed.

A job moves one status per retrieve: Submitted -> Validating (the input object is read
from S3 and checked: a `.jsonl` object of `{recordId, modelInput}` lines, between
`min_records` and `max_records` of them; a bad input fails the job, with a message naming
the S3 URI and the job ARN) -> Scheduled -> InProgress -> Completed or
PartiallyCompleted at the `polls_to_end`th retrieve, when it writes
`<output prefix>/<job id>/<input name>.out` (lines shuffled) and `manifest.json.out`.
Each record is checked against its model family's documented body; a record that is
wrong, or whose input holds FAIL, becomes an error record (`{"errorCode": 400,
"errorMessage"}`, the message naming AWS resources). A stopped job ends Stopped at the
next retrieve with only its first record run; `expire_jobs` ends jobs Expired the same
way, `fail_jobs` fails them at validation, `omit_counts` leaves the record counts out
of the job (they are in the manifest). Faults come from `tests.fakes.faults`.
"""

from __future__ import annotations

import hmac
import random
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiobotocore.session import get_session
from aiohttp import web
from aiohttp.typedefs import Handler
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakes import faults
from tests.fakes.faults import Captured, FaultState, Ledger, Replayer

Json = dict[str, Any]

ACCOUNT = "210987654321"
_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    409: "ConflictException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
    r"(?P<service>[a-z0-9-]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_JOB_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")
_TOKEN = re.compile(r"[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}")
_ROLE = re.compile(r"arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+")
_S3 = re.compile(r"s3://([a-z0-9][a-z0-9.-]+)/?(.*)")
_ENDED = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})
_STATUSES = ("Submitted", "Validating", "Scheduled", "InProgress")
_TITAN_KEYS = {"inputText", "dimensions", "normalize", "embeddingTypes", "embeddingConfig"}
_COHERE_KEYS = {"texts", "images", "input_type", "truncate", "embedding_types"}
_COHERE_KEYS |= {"output_dimension", "max_tokens", "inputs"}
_CONVERSE_KEYS = {"messages", "system", "inferenceConfig", "toolConfig", "outputConfig"}
_CONVERSE_KEYS |= {"additionalModelRequestFields", "guardrailConfig", "performanceConfig"}


@dataclass
class FakeBedrockState(FaultState):
    access_key: str
    secret_key: str
    s3: dict[str, Any]  # endpoint_url, region, access_key_id, secret_access_key
    region: str = "us-east-1"
    jobs: Ledger = field(default_factory=Ledger)
    tokens: dict[str, str] = field(default_factory=dict)  # clientRequestToken -> job id
    # Every authenticated call as (method, path with query).
    calls: list[tuple[str, str]] = field(default_factory=list)
    signatures_checked: int = 0
    polls_to_end: int = 4
    min_records: int = 100
    max_records: int = 50_000
    page_size: int = 2
    fail_jobs: bool = False
    expire_jobs: bool = False
    omit_counts: bool = False


BEDROCK = web.AppKey("bedrock", FakeBedrockState)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> str:
    return _iso(datetime.now(UTC))


def error_response(status: int, message: str, kind: str | None = None) -> web.Response:
    kind = kind or _TYPES.get(status, "InternalServerException")
    headers = {
        "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": str(uuid.uuid4()),
    }
    return web.json_response({"message": message}, status=status, headers=headers)


# --- SigV4 -------------------------------------------------------------------------


async def _signature_problem(state: FakeBedrockState, request: web.Request) -> web.Response | None:
    """None when the request is signed with the known key for this region and service."""
    match = _AUTH.fullmatch(request.headers.get("Authorization", ""))
    amz_date = request.headers.get("X-Amz-Date", "")
    if match is None or not amz_date:
        return error_response(403, "Missing Authentication Token", "MissingAuthenticationToken")
    if match["key"] != state.access_key:
        message = "The security token included in the request is invalid."
        return error_response(403, message, "UnrecognizedClientException")
    scope_ok = match["region"] == state.region and match["service"] == "bedrock"
    if not scope_ok or not amz_date.startswith(match["date"]):
        return error_response(403, "Credential should be scoped correctly.", "InvalidSignature")
    when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if abs(datetime.now(UTC) - when) > timedelta(minutes=5):
        return error_response(403, "Signature expired.", "InvalidSignatureException")
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return error_response(403, "host and x-amz-date must be signed.", "InvalidSignature")
    headers = {name: request.headers.get(name, "") for name in signed}
    copy = AWSRequest(
        method=request.method,
        url=f"http://{request.host}{request.raw_path}",
        data=await request.read(),
        headers=headers,
    )
    copy.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(state.access_key, state.secret_key), "bedrock", state.region)
    expected = signer.signature(signer.string_to_sign(copy, signer.canonical_request(copy)), copy)
    if not hmac.compare_digest(expected, match["signature"]):
        message = "The request signature we calculated does not match the signature you provided."
        return error_response(403, message, "InvalidSignatureException")
    state.signatures_checked += 1
    return None


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[BEDROCK]
    if (problem := await _signature_problem(state, request)) is not None:
        return problem
    state.calls.append((request.method, request.path_qs))
    return await faults.serve(
        state,
        request,
        lambda: handler(request),
        error=error_response,
        replayers=REPLAYERS,
        label="Injected failure",
    )


# --- create / stop / list ----------------------------------------------------------


def _new_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    while True:
        ident = "".join(secrets.choice(alphabet) for _ in range(12))
        if any(c.isdigit() for c in ident):
            return ident


def _create_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    for name in ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig"):
        if not body.get(name):
            return (
                f"1 validation error detected: Value null at '{name}' failed to satisfy constraint"
            )
    if not _JOB_NAME.fullmatch(body["jobName"]) or len(body["jobName"]) > 63:
        return "1 validation error detected: Value at 'jobName' failed to satisfy constraint"
    token = body.get("clientRequestToken")
    if token is not None and not _TOKEN.fullmatch(token):
        return "Value at 'clientRequestToken' failed to satisfy constraint"
    if not _ROLE.fullmatch(body["roleArn"]):
        return f"Value '{body['roleArn']}' at 'roleArn' failed to satisfy constraint"
    if body.get("modelInvocationType", "InvokeModel") not in ("InvokeModel", "Converse"):
        return "Value at 'modelInvocationType' failed to satisfy enum value set"
    hours = body.get("timeoutDurationInHours", 24)
    if not isinstance(hours, int) or not 24 <= hours <= 168:
        return "Value at 'timeoutDurationInHours' must be between 24 and 168"
    source = (body["inputDataConfig"].get("s3InputDataConfig") or {}).get("s3Uri")
    target = (body["outputDataConfig"].get("s3OutputDataConfig") or {}).get("s3Uri")
    if not _S3.fullmatch(source or "") or not _S3.fullmatch(target or ""):
        return "The S3 URIs must be s3://bucket/key"
    for tag in body.get("tags") or ():
        if set(tag) != {"key", "value"}:
            return "Each tag must be {key, value}"
    return None


def _create(state: FakeBedrockState, body: Json) -> Json | str:
    token = body.get("clientRequestToken")
    if token and token in state.tokens:  # idempotent: the job this token already made
        return state.jobs[state.tokens[token]]
    if problem := _create_problem(body):
        return problem
    ident = _new_id()
    now = datetime.now(UTC)
    hours = body.get("timeoutDurationInHours", 24)
    job = {
        "jobArn": f"arn:aws:bedrock:{state.region}:{ACCOUNT}:model-invocation-job/{ident}",
        "jobName": body["jobName"],
        "modelId": body["modelId"],
        "roleArn": body["roleArn"],
        "status": "Submitted",
        "submitTime": _iso(now),
        "lastModifiedTime": _iso(now),
        "inputDataConfig": body["inputDataConfig"],
        "outputDataConfig": body["outputDataConfig"],
        "timeoutDurationInHours": hours,
        "jobExpirationTime": _iso(now + timedelta(hours=hours)),
        "modelInvocationType": body.get("modelInvocationType", "InvokeModel"),
        "_tags": body.get("tags") or [],
        "_polls": 0,
    }
    if token:
        job["clientRequestToken"] = token
        state.tokens[token] = ident
    state.jobs[ident] = job
    return job


async def create_job(request: web.Request) -> web.Response:
    made = _create(request.app[BEDROCK], await request.json())
    if isinstance(made, str):
        return error_response(400, made)
    return web.json_response({"jobArn": made["jobArn"]})


def _replay_create(state: FakeBedrockState, call: Captured) -> None:
    _create(state, orjson.loads(call.body))


REPLAYERS: dict[str, Replayer[FakeBedrockState]] = {"POST /model-invocation-job": _replay_create}


def _public(job: Json) -> Json:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _job_or_none(request: web.Request) -> Json | None:
    ident = request.match_info["job"].rpartition("/")[2]
    return request.app[BEDROCK].jobs.get(ident)


async def get_job(request: web.Request) -> web.Response:
    state = request.app[BEDROCK]
    job = _job_or_none(request)
    if job is None:
        return error_response(404, f"Could not find job {request.match_info['job']}")
    await _advance(state, job)
    return web.json_response(_public(job))


async def stop_job(request: web.Request) -> web.Response:
    job = _job_or_none(request)
    if job is None:
        return error_response(404, f"Could not find job {request.match_info['job']}")
    if job["status"] in _ENDED or job["status"] == "Stopping":
        message = f"Job {job['jobArn']} can't be stopped: it is {job['status']}."
        return error_response(400, message)
    job |= {"status": "Stopping", "lastModifiedTime": _now()}
    return web.json_response({})


async def list_jobs(request: web.Request) -> web.Response:
    state, query = request.app[BEDROCK], request.query
    after = query.get("submitTimeAfter")
    since = datetime.fromisoformat(after.replace("Z", "+00:00")) if after else None

    def keep(job: Json) -> bool:
        submitted = datetime.fromisoformat(job["submitTime"].replace("Z", "+00:00"))
        return (
            (since is None or submitted >= since)
            and query.get("nameContains", "") in job["jobName"]
            and query.get("statusEquals", job["status"]) == job["status"]
        )

    limit = min(int(query.get("maxResults", "1000")), state.page_size)
    newest_first = query.get("sortOrder", "Descending") == "Descending"
    page, more = state.jobs.page(
        limit, after=query.get("nextToken"), newest_first=newest_first, keep=keep
    )
    body: Json = {"invocationJobSummaries": [_public(job) for job in page]}
    if more and page:
        body["nextToken"] = page[-1]["jobArn"].rpartition("/")[2]
    return web.json_response(body)


def _add_unrelated(state: FakeBedrockState, created_at: int, tag: str | None) -> None:
    """Someone else's job on the account (a busy account), already completed."""
    name = tag.replace("_", "-") if tag else f"nightly-eval-{secrets.token_hex(4)}"
    ident = _new_id()
    moment = _iso(datetime.fromtimestamp(created_at, UTC))
    state.jobs[ident] = {
        "jobArn": f"arn:aws:bedrock:{state.region}:{ACCOUNT}:model-invocation-job/{ident}",
        "jobName": name,
        "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
        "roleArn": f"arn:aws:iam::{ACCOUNT}:role/OtherTeam",
        "status": "Completed",
        "submitTime": moment,
        "lastModifiedTime": moment,
        "endTime": moment,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://other-team/in/x.jsonl"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://other-team/out/"}},
        "_polls": 0,
    }


# --- running jobs ------------------------------------------------------------------


def _s3_client(state: FakeBedrockState) -> Any:
    s3 = state.s3
    return get_session().create_client(
        "s3",
        endpoint_url=s3["endpoint_url"],
        region_name=s3["region"],
        aws_access_key_id=s3["access_key_id"],
        aws_secret_access_key=s3["secret_access_key"],
    )


def _split(uri: str) -> tuple[str, str]:
    match = _S3.fullmatch(uri)
    assert match is not None
    return match[1], match[2]


async def _read_input(state: FakeBedrockState, job: Json) -> list[Json] | str:
    uri = job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
    where = f"the input {uri} of job {job['jobArn']}"
    if not uri.endswith(".jsonl"):
        return f"Only .jsonl files are read: {where} is not one."
    bucket, key = _split(uri)
    async with _s3_client(state) as s3:
        try:
            answer = await s3.get_object(Bucket=bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            return f"Could not read {where}: it does not exist."
        async with answer["Body"] as body:
            data = await body.read()
    records: list[Json] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return f"Line {number} of {where} is not JSON."
        record_id = record.get("recordId") if isinstance(record, dict) else None
        if not isinstance(record_id, str) or record_id in seen:
            return f"Line {number} of {where} needs a unique recordId."
        if not isinstance(record.get("modelInput"), dict):
            return f"Line {number} of {where} has no modelInput object."
        seen.add(record_id)
        records.append(record)
    if not state.min_records <= len(records) <= state.max_records:
        return (
            f"{where} has {len(records)} records; a job needs between "
            f"{state.min_records} and {state.max_records}."
        )
    return records


def _family(model_id: str) -> str:
    if "anthropic.claude" in model_id:
        return "claude"
    if "titan-embed" in model_id:
        return "titan"
    if "cohere.embed" in model_id:
        return "cohere"
    return "text"


def _record_problem(job: Json, body: Json) -> str | None:
    """What Bedrock would answer 400 to, per the model family's documented body."""
    converse = job["modelInvocationType"] == "Converse"
    family = _family(job["modelId"])
    if converse:
        if "toolConfig" in body:
            return "Tool use is not supported for batch inference jobs of the Converse type."
        if set(body) - _CONVERSE_KEYS or not isinstance(body.get("messages"), list):
            return f"Malformed Converse request: {sorted(set(body) - _CONVERSE_KEYS)}"
        return None
    if family == "claude":
        if body.get("anthropic_version") != "bedrock-2023-05-31":
            return "anthropic_version: bedrock-2023-05-31 is required"
        if "model" in body or not isinstance(body.get("max_tokens"), int):
            return "max_tokens is required and model is not allowed"
        return None if isinstance(body.get("messages"), list) else "messages is required"
    if family == "titan":
        ok = isinstance(body.get("inputText"), str) and not set(body) - _TITAN_KEYS
        return None if ok else "Malformed input request: expected {inputText, ...}"
    if family == "cohere":
        texts, kind = body.get("texts"), body.get("input_type")
        ok = isinstance(texts, list) and len(texts) <= 96 and not set(body) - _COHERE_KEYS
        return None if ok and kind else "Malformed input request: texts and input_type needed"
    return "This model is not supported by the fake."


def _output(job: Json, record: Json) -> Json:
    rid, body = record["recordId"], record["modelInput"]
    family = _family(job["modelId"])
    if job["modelInvocationType"] == "Converse":
        content = [{"text": f"fake reply to {rid}"}]
        usage = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "end_turn",
            "usage": usage,
            "metrics": {"latencyMs": 120},
        }
    if family == "claude":
        return {
            "id": f"msg_bdrk_{secrets.token_hex(8)}",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-sonnet-20240620",
            "content": [{"type": "text", "text": f"fake reply to {rid}"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
    vector = [0.5, -0.25, 0.125]
    if family == "titan":
        return {"embedding": vector, "inputTextTokenCount": 3}
    vectors = [vector for _ in body["texts"]]
    if "embed-v4" in job["modelId"]:
        embeddings: Any = {"float": vectors}
        kind = "embeddings_by_type"
    else:
        embeddings, kind = vectors, "embeddings_floats"
    return {
        "id": str(uuid.uuid4()),
        "embeddings": embeddings,
        "response_type": kind,
        "texts": body["texts"],
    }


def _answer(job: Json, record: Json) -> Json:
    body = record["modelInput"]
    problem = _record_problem(job, body)
    if problem is None and "FAIL" in orjson.dumps(body).decode():
        target = job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        problem = f"Malformed input request in {job['jobArn']}: see {target}errors.txt"
    base = {"recordId": record["recordId"], "modelInput": body}
    if problem is not None:
        return base | {"error": {"errorCode": 400, "errorMessage": problem}}
    return base | {"modelOutput": _output(job, record)}


async def _finish(state: FakeBedrockState, job: Json, status: str, records: list[Json]) -> None:
    answers = [_answer(job, record) for record in records]
    random.Random(job["jobArn"]).shuffle(answers)
    failed = sum("error" in a for a in answers)
    total = len(job.get("_records", []))
    counts = {
        "totalRecordCount": total,
        "processedRecordCount": len(answers),
        "successRecordCount": len(answers) - failed,
        "errorRecordCount": failed,
    }
    manifest = counts | {"inputTokenCount": 10 * len(answers), "outputTokenCount": 5 * len(answers)}
    if status == "Completed" and failed:
        status = "PartiallyCompleted"
    bucket, prefix = _split(job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])
    source = job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"].rpartition("/")[2]
    folder = f"{prefix.rstrip('/')}/{job['jobArn'].rpartition('/')[2]}".lstrip("/")
    async with _s3_client(state) as s3:
        if answers:
            data = b"".join(orjson.dumps(a) + b"\n" for a in answers)
            await s3.put_object(Bucket=bucket, Key=f"{folder}/{source}.out", Body=data)
        await s3.put_object(
            Bucket=bucket, Key=f"{folder}/manifest.json.out", Body=orjson.dumps(manifest)
        )
    now = _now()
    job |= {"status": status, "endTime": now, "lastModifiedTime": now}
    if not state.omit_counts:
        job |= counts


async def _advance(state: FakeBedrockState, job: Json) -> None:
    status = job["status"]
    if status in _ENDED:
        return
    if status == "Stopping":
        await _finish(state, job, "Stopped", job.get("_records", [])[:1])
        return
    job["_polls"] += 1
    if status == "Submitted":
        records = await _read_input(state, job)
        if state.fail_jobs and not isinstance(records, str):
            bucket = _split(job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"])[0]
            records = f"Role {job['roleArn']} can't write to bucket {bucket} for {job['jobArn']}"
        if isinstance(records, str):
            now = _now()
            job |= {"status": "Failed", "message": records, "endTime": now, "lastModifiedTime": now}
            return
        job |= {"status": "Validating", "_records": records}
    elif status in ("Validating", "Scheduled"):
        job["status"] = _STATUSES[_STATUSES.index(status) + 1]
        if job["status"] == "InProgress" and not state.omit_counts:
            job |= {"totalRecordCount": len(job["_records"]), "processedRecordCount": 0}
    elif job["_polls"] >= state.polls_to_end:
        if state.expire_jobs:
            await _finish(state, job, "Expired", job["_records"][:1])
        else:
            await _finish(state, job, "Completed", job["_records"])
    job["lastModifiedTime"] = _now()


def make_bedrock_upstream(
    access_key: str, secret_key: str, *, s3: dict[str, Any], **options: Any
) -> web.Application:
    state = FakeBedrockState(access_key=access_key, secret_key=secret_key, s3=s3, **options)
    app = web.Application(middlewares=[_gate])
    app[BEDROCK] = state
    app.cleanup_ctx.append(faults.lifecycle(state, lambda at, tag: _add_unrelated(state, at, tag)))
    app.router.add_post("/model-invocation-job", create_job)
    app.router.add_get("/model-invocation-jobs", list_jobs)
    app.router.add_get("/model-invocation-job/{job:.+}", get_job)
    app.router.add_post("/model-invocation-job/{job:[^/]+}/stop", stop_job)
    return app
