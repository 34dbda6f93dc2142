"""`type: bedrock`: OpenAI batches run as Amazon Bedrock batch inference jobs, via S3.

Flow (Bedrock user guide, "Process multiple prompts with batch inference", and the API
reference of CreateModelInvocationJob, GetModelInvocationJob, ListModelInvocationJobs and
StopModelInvocationJob): `upload_file` translates the validated input line by line
(`translate.py`) into `{"recordId", "modelInput"}` records and streams them to
`<input prefix>/<gateway file id>.jsonl` (Bedrock reads only `.jsonl` objects);
`create_batch` makes the job with the gateway batch id as `clientRequestToken` (the same
token gets the same job back, so a create retried after a lost answer can't make a
second one) and as `jobName`, which is how a create of unknown outcome is found again
(`lookup = "tag"`: ListModelInvocationJobs by `nameContains` and `submitTimeAfter`;
Bedrock's list does not return tags, which are set too). Where the user guide's pages
disagree on output order, the current "View the results" page is followed: not
guaranteed, so results are matched by recordId (= custom_id).

Bedrock writes `<output prefix>/<job id>/<input name>.out` and `manifest.json.out`;
the gateway sees the results as two files, `<job id>#output` and `<job id>#errors`
(never shown to clients), each streamed line by line and translated (`outputs.py`).
What the adapter remembers (StateStore): per staged input, its model, family and key;
per job, what reading its results needs (so every read gives the same bytes), which
views it showed and which of them the gateway deleted (the job's output objects go once
every shown view is). A staged input is named after the gateway file id, so an upload
repeated after a lost answer overwrites the same object: there are no duplicate uploads
for the repair sweep to find, and `tagged_files` stays empty.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from providers.base import (
    CLOCK_SKEW_SECONDS,
    GATEWAY_TAG,
    BaseProvider,
    BatchRequest,
    ByteStream,
    InputFile,
    Lookup,
    ProviderError,
    RequestCounts,
    UpstreamBatch,
    UpstreamFile,
)
from providers.bedrock import outputs
from providers.bedrock.aws import AWS_ERRORS, AwsClients, Scrubber, provider_error
from providers.bedrock.config import CHAT, EMBEDDINGS, BedrockModel, BedrockProviderConfig
from providers.bedrock.jobs import (
    JOB_ID,
    Job,
    job_id,
    job_name,
    manifest_counts,
    parse_job,
    s3_location,
)
from providers.bedrock.storage import Storage
from providers.bedrock.translate import record_transform
from providers.context import ProviderContext, ProviderType, StateStore
from providers.lines import rewritten
from providers.results import VIEWS, batch_usage, results_view, split_named, views_deleted

__all__ = ["BedrockModel", "BedrockProvider", "BedrockProviderConfig"]

_INPUT_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}\.jsonl")
_LIST_PAGE = 100


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _unusable(what: str) -> ProviderError:
    return ProviderError("retryable", f"the provider sent {what}", ambiguous=True)


class BedrockProvider(BaseProvider):
    lookup: Lookup = "tag"

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        config: BedrockProviderConfig,
        state: StateStore,
    ) -> None:
        super().__init__(name, endpoints & {CHAT, EMBEDDINGS})
        self.config = config
        self.state = state
        self.scrub = Scrubber(config.secrets())
        self.clients = AwsClients(name, config)
        self.storage = Storage(self.clients, self.scrub, config.part_bytes)
        self._input = s3_location(config.input_s3_uri) or ("", "")
        self._output = s3_location(config.output_s3_uri) or ("", "")

    async def close(self) -> None:
        await self.clients.close()

    async def _bedrock(self, operation: str, *ids: str, **params: Any) -> dict[str, Any]:
        """One control-plane call; `ids` are scrubbed from its error message exactly."""
        try:
            client = await self.clients.client("bedrock")
            answer = await getattr(client, operation)(**params)
        except AWS_ERRORS as exc:
            raise provider_error(exc, self.scrub, *ids) from None
        return answer if isinstance(answer, dict) else {}

    # --- files -------------------------------------------------------------------

    async def upload_file(self, file: InputFile) -> str:
        """Check the record limits, then translate and stream the file to S3."""
        name, model_id, family = self.config.file_model(file, self.endpoints)
        low, high = self.config.min_records, self.config.max_records
        if not low <= file.line_count <= high:
            bound = f"at least {low}" if file.line_count < low else f"at most {high}"
            message = (
                f"A Bedrock batch job takes {bound} records (min_records {low}, "
                f"max_records {high}); this file has {file.line_count}."
            )
            raise ProviderError("bad_request", message, code="invalid_line_count")
        if not _INPUT_NAME.fullmatch(file.filename):
            raise ProviderError("bad_request", "The input file's name can't be staged on S3.")
        bucket, prefix = self._input
        key = _join(prefix, file.filename)
        transform = record_transform(
            family, model_id, default_max_tokens=self.config.default_max_tokens
        )
        extra: dict[str, Any] = {}
        if self.config.kms_key_id:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.config.kms_key_id}
        await self.storage.upload(bucket, key, rewritten(file, transform), **extra)
        facts = {"model": name, "model_id": model_id, "family": family}
        facts |= {"endpoint": file.endpoint, "bucket": bucket, "key": key}
        await self.state.save(file.filename, facts)
        return file.filename

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        name, part = _split(upstream_file_id)
        if part is None:
            bucket, key = await self._input_location(name)
            found = await self.storage.head(bucket, key)
            if found is None:
                raise ProviderError("not_found", "The provider has no such file.")
            return UpstreamFile(name, found[0], found[1], name)
        facts = await self._results(name)
        found = await self.storage.head(*facts["out"])
        # One results object, two views: only a read tells each one's size; no object
        # (a job stopped before any record ran) is an empty file.
        size = None if found is not None else 0
        return UpstreamFile(upstream_file_id, size, facts["created"], f"{part}.jsonl")

    async def delete_file(self, upstream_file_id: str) -> None:
        """A staged input goes at once; a job's outputs once both result views are."""
        name, part = _split(upstream_file_id)
        if part is None:
            await self.storage.delete(*await self._input_location(name))
            await self.state.delete(name)
            return
        facts = await self._results(name)
        if not await views_deleted(self.state, name, part, facts.get("views", VIEWS)):
            return  # another view is still the gateway's
        bucket, key = facts["out"]
        await self.storage.delete_folder(bucket, key.rpartition("/")[0] + "/")
        await self.state.delete(name)

    async def _input_location(self, name: str) -> tuple[str, str]:
        facts = await self.state.load(name)
        if facts is not None:
            return facts["bucket"], facts["key"]
        bucket, prefix = self._input
        return bucket, _join(prefix, name)

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self._content(upstream_file_id)

    @asynccontextmanager
    async def _content(self, upstream_file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        name, part = results_view(upstream_file_id, JOB_ID, _INPUT_NAME)
        facts = await self._results(name)

        def scrub(text: str) -> str:
            return self.scrub(text, name)

        async with self.storage.open(*facts["out"]) as chunks:
            yield outputs.view_lines(
                chunks,
                output=part == "output",
                family=facts["family"],
                model=facts["model"] or "",
                created=facts["created"],
                seed=name,
                scrub=scrub,
            )

    # --- jobs --------------------------------------------------------------------

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        facts = await self.state.load(request.input_file_id)
        if facts is None:
            raise ProviderError("not_found", "The input file is not known to this provider.")
        if facts["endpoint"] != request.endpoint:
            uploaded = facts["endpoint"]
            message = f"The input file was uploaded for {uploaded}, not {request.endpoint}."
            raise ProviderError("bad_request", message)
        tag = request.gateway_batch_id
        # Without a gateway id (no caller does that) a create is not retried by token.
        name = job_name(tag) if tag else f"gateway-{secrets.token_hex(12)}"
        output: dict[str, Any] = {"s3Uri": f"s3://{self._output[0]}/{_join(self._output[1], '')}"}
        if self.config.kms_key_id:
            output["s3EncryptionKeyId"] = self.config.kms_key_id
        params: dict[str, Any] = {
            "jobName": name,
            "clientRequestToken": name,
            "roleArn": self.config.role_arn,
            "modelId": facts["model_id"],
            "modelInvocationType": "Converse" if facts["family"] == "converse" else "InvokeModel",
            "inputDataConfig": {
                "s3InputDataConfig": {
                    "s3InputFormat": "JSONL",
                    "s3Uri": f"s3://{facts['bucket']}/{facts['key']}",
                }
            },
            "outputDataConfig": {"s3OutputDataConfig": output},
        }
        if tag:
            params["tags"] = [{"key": GATEWAY_TAG, "value": tag}]
        if self.config.timeout_hours is not None:
            params["timeoutDurationInHours"] = self.config.timeout_hours
        answer = await self._bedrock("create_model_invocation_job", **params)
        ident = job_id(answer.get("jobArn"))
        if ident is None:
            raise _unusable("a job without a job ARN")
        job = {k: facts[k] for k in ("model", "family", "endpoint")}
        await self.state.save(ident, job | {"input": request.input_file_id})
        return UpstreamBatch(id=ident, status="validating", model=facts["model"])

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        if not JOB_ID.fullmatch(upstream_id):
            raise ProviderError("not_found", "No such batch at the provider.")
        data = await self._bedrock(
            "get_model_invocation_job", upstream_id, jobIdentifier=upstream_id
        )
        return await self._view(self._parse(data), full=True)

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        if not JOB_ID.fullmatch(upstream_id):
            raise ProviderError("not_found", "No such batch at the provider.")
        try:
            await self._bedrock("stop_model_invocation_job", upstream_id, jobIdentifier=upstream_id)
        except ProviderError as exc:
            if exc.kind != "bad_request":
                raise
            ended = await self.get_batch(upstream_id)  # a job that already ended can't stop
            if ended.terminal:
                return ended
            raise
        view = await self.get_batch(upstream_id)
        if not view.terminal:  # Stopping, or not yet seen as such
            view.status = "cancelling"
        return view

    async def find_batch(self, gateway_batch_id: str, since: int) -> UpstreamBatch | None:
        name = job_name(gateway_batch_id)
        async for item in self._listed(since, name):
            job = self._parse(item)
            if job.name == name:
                return await self._view(job, full=True)
        return None

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        found = []
        async for item in self._listed(since, "batch-"):
            job = self._parse(item)
            if job.tag is not None:
                found.append((job.tag, await self._view(job, full=False)))
        return found

    async def _listed(self, since: int, contains: str) -> AsyncIterator[dict[str, Any]]:
        """Every job whose name contains `contains` submitted since `since` (less the
        clock skew), all pages; a page that can't be read raises."""
        after = datetime.fromtimestamp(since - CLOCK_SKEW_SECONDS, UTC)
        params: dict[str, Any] = {"submitTimeAfter": after, "nameContains": contains}
        params |= {"maxResults": _LIST_PAGE, "sortBy": "CreationTime", "sortOrder": "Descending"}
        seen: set[str] = set()
        while True:
            page = await self._bedrock("list_model_invocation_jobs", **params)
            items = page.get("invocationJobSummaries", [])
            if not isinstance(items, list):
                raise _unusable("an unreadable job list")
            for item in items:
                if isinstance(item, dict):
                    yield item
            token = page.get("nextToken")
            if not isinstance(token, str) or not token:
                return
            if token in seen:
                raise _unusable("a job list that does not end")
            seen.add(token)
            params["nextToken"] = token

    def _parse(self, data: dict[str, Any]) -> Job:
        job = parse_job(data)
        if job is None:
            raise _unusable("an unreadable job")
        return job

    async def _view(self, job: Job, *, full: bool) -> UpstreamBatch:
        """The job in OpenAI terms. `full` (a retrieve) also reads the manifest of an
        ended job and keeps what reading its results needs; list views read nothing
        but the state (jobs of other gateways on the account may be listed too)."""
        facts = await self._facts(job, save=full)
        timestamps: dict[str, int | None] = {"expires_at": job.expires}
        if job.status != "validating":
            timestamps["in_progress_at"] = job.submitted  # Bedrock reports no start time
        if job.status == "cancelling":
            timestamps["cancelling_at"] = job.modified
        view = UpstreamBatch(id=job.id, status=job.status, model=facts.get("model"))
        view.timestamps = timestamps
        total, _, succeeded, failed = job.counts
        if view.terminal:
            timestamps[f"{job.status}_at"] = job.ended or job.modified
        if job.status == "failed":
            text = self.scrub(job.message, job.id) if job.message else "The Bedrock job failed."
            view.errors = [{"code": "job_failed", "message": text, "param": None, "line": None}]
        elif view.terminal:
            manifest = facts.get("manifest")
            if full and manifest is None and "out" in facts:
                bucket, key = facts["out"]
                path = key.rpartition("/")[0] + "/manifest.json.out"
                manifest = await self.storage.read_json(bucket, path)
            counts, tokens = manifest_counts(manifest)
            total = total if total is not None else counts[0]
            succeeded = succeeded if succeeded is not None else counts[2]
            failed = failed if failed is not None else counts[3]
            if tokens is not None:
                view.usage = batch_usage(*tokens)
            if succeeded is None or succeeded > 0:
                view.output_file_id = f"{job.id}#output"
            if failed is None or failed > 0:
                view.error_file_id = f"{job.id}#errors"
            # Which views the gateway was shown: the outputs go once those are deleted.
            shown = (view.output_file_id, view.error_file_id)
            kept = {
                "manifest": manifest,
                "views": [v for v, f in zip(VIEWS, shown, strict=True) if f],
            }
            if full and "out" in facts and any(facts.get(k) != v for k, v in kept.items()):
                await self.state.save(job.id, facts | kept)
        if total is not None:
            view.request_counts = RequestCounts(total, succeeded or 0, failed or 0)
        return view

    async def _facts(self, job: Job, *, save: bool) -> dict[str, Any]:
        """What the adapter knows of a job: saved at create, else rebuilt from the job
        (a create whose answer was lost) and its staged input's facts; an ended job's
        output location and end time are added once, so every read is the same."""
        facts = await self.state.load(job.id)
        changed = facts is None
        if facts is None:
            name = (job.input_uri or "").rpartition("/")[2]
            staged = await self.state.load(name) if name else None
            facts = {
                "model": (staged or {}).get("model") or self.config.client_name(job.model_id),
                "family": (staged or {}).get("family") or self.config.family_of(job.model_id or ""),
                "input": name,
            }
        if job.status in ("completed", "cancelled", "expired") and "out" not in facts:
            output = s3_location(job.output_uri)
            name = (job.input_uri or "").rpartition("/")[2]
            if output is not None and name:
                key = _join(output[1], f"{job.id}/{name}.out")
                facts |= {"out": [output[0], key], "created": job.ended or job.modified or 0}
                changed = True
        if changed and save:
            await self.state.save(job.id, facts)
        return facts

    async def _results(self, job: str) -> dict[str, Any]:
        """The facts reading a job's results needs, asking Bedrock if they aren't kept."""
        facts = await self.state.load(job)
        if facts is None or "out" not in facts:
            view = await self.get_batch(job)
            facts = await self.state.load(job)
            if not view.terminal or facts is None or "out" not in facts:
                raise ProviderError("not_found", "The batch has no results at the provider.")
        if facts.get("family") is None:
            raise ProviderError("not_found", "The batch's model is not known to this provider.")
        return facts


def _split(upstream_file_id: str) -> tuple[str, str | None]:
    """`file-x.jsonl` -> (it, None); `<job id>#output` -> (job id, "output")."""
    return split_named(upstream_file_id, JOB_ID, _INPUT_NAME)


def build(context: ProviderContext, config: BedrockProviderConfig) -> BedrockProvider:
    return BedrockProvider(context.name, context.endpoints, config, context.state)


TYPE = ProviderType("bedrock", BedrockProviderConfig, build)
