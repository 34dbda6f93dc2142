"""`type: vertex`: OpenAI batches run as Vertex AI batch prediction jobs (Gemini models),
staged through Cloud Storage.

Flow (Vertex AI docs "Batch inference from Cloud Storage" and the REST reference of
projects.locations.batchPredictionJobs create/get/list/cancel): `upload_file` translates
the validated input line by line (`translate.py`, sharing gemini's request translation)
into `{"request": ...}` JSONL and streams it to `<gcs_input_prefix>/<gateway file>.jsonl`
with a resumable upload (`providers/gcs.py`); each request carries its line index in its
`labels`, and the index -> custom_id map goes to the blob store (`ids.py`), since Vertex
lines have no key and the output order is not guaranteed (the output echoes each request,
labels included). Embeddings lines become text-embedding instances `{"content": ...}`,
which have no room for a key: their output lines are matched by the instance they echo.
`create_batch` makes the job with the gateway batch id as `displayName`
and, base32-encoded, as a label. Vertex's create takes no idempotency key, so a create of
unknown outcome is found by listing the jobs made since (`create_time` filter, every page)
and matching both (`lookup = "tag"`).

Vertex writes `<output prefix>/<gateway batch>/prediction-model-<time>/predictions*.jsonl`;
the gateway sees them as two files, `<job id>#output` and `<job id>#errors` (never shown
to clients), each streamed line by line and translated. What the adapter remembers
(StateStore): per staged input, its model, object and map; per job, its map, model and,
once it ended, its output folder and end time (so every read gives the same bytes), and
which result view the gateway deleted (the job's output objects go once both are).
Upstream ids are the jobs' numeric ids: the resource names, which hold the project, are
built here and never leave.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from providers.base import (
    CLOCK_SKEW_SECONDS,
    BatchRequest,
    ByteStream,
    InputFile,
    Lookup,
    ProviderError,
    UpstreamBatch,
    UpstreamFile,
)
from providers.context import BlobStore, ProviderContext, ProviderType, StateStore
from providers.egress import build_egress
from providers.gcs import GCSClient, gs_location, gs_uri
from providers.gemini.operations import rfc3339
from providers.http import HTTPProvider, RawResponse
from providers.lines import rewritten
from providers.results import (
    VIEWS,
    results_view,
    shown_views,
    split_named,
    stable_hex,
    views_deleted,
)
from providers.tokens import BearerToken, TokenSource
from providers.transport import Body, HTTPSettings
from providers.vertex import translate
from providers.vertex.auth import google_token_source
from providers.vertex.config import CHAT, EMBEDDINGS, VertexProviderConfig, is_embedding_model
from providers.vertex.ids import CustomIds, IdsWriter, InstanceIds, copy_blob, load_ids
from providers.vertex.jobs import (
    GATEWAY_LABEL,
    JOB_ID,
    VertexJob,
    encode_tag,
    job_view,
    parse_job,
    since_filter,
)
from providers.vertex.results import prediction_files, view_lines

__all__ = ["TYPE", "VertexProvider", "VertexProviderConfig"]

_INPUT_NAME = re.compile(r"(file-[A-Za-z0-9]{24})\.jsonl")
# Vertex's resource names, service accounts and OAuth tokens, kept out of every message.
_VERTEX_NAMES = (
    (re.compile(r"\bprojects/[^\s/\"']+(?:/[A-Za-z]+/[^\s/\"']+)*"), "[upstream id]"),
    (re.compile(r"\bbatchPredictionJobs/\d+"), "[upstream id]"),
    (re.compile(r"[\w.+-]+@[\w-]+\.iam\.gserviceaccount\.com"), "[account]"),
    (re.compile(r"\bya29\.[\w.-]+"), "[redacted]"),
)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


class VertexProvider(HTTPProvider):
    # google.rpc.Status: `{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}`.
    error_code_key = "status"
    id_patterns = _VERTEX_NAMES
    lookup: Lookup = "tag"

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        storage: HTTPSettings,
        *,
        config: VertexProviderConfig,
        state: StateStore,
        blobs: BlobStore,
        token_source: TokenSource,
    ) -> None:
        super().__init__(name, endpoints & {CHAT, EMBEDDINGS}, http)
        self.config = config
        self.state = state
        self.blobs = blobs
        self.token = BearerToken(token_source, "a Google access token")
        self._hidden = sorted(set(config.secrets()), key=len, reverse=True)
        self.gcs = GCSClient(
            storage,
            auth=self.token.headers,
            scrub=self.scrub,
            refused=self.token.forget,
            chunk_bytes=config.upload_chunk_bytes,
        )
        project, location = config.project, config.location
        self._jobs = f"/{config.api_version}/projects/{project}/locations/{location}"
        self._jobs += "/batchPredictionJobs"
        # Blob keys are the gateway's, shared by every provider: one namespace per provider.
        self._blob_prefix = f"vertex-{stable_hex('vertex', name)[:12]}"

    async def close(self) -> None:
        await super().close()
        await self.gcs.close()

    # --- the wire: a fresh token on every call, forgotten when refused ---------------

    async def request_raw(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Body = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawResponse:
        sent = {**(headers or {}), **await self.token.headers()}
        return await super().request_raw(
            method, path, json=json, data=data, params=params, headers=sent
        )

    def http_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        if status == 401:
            self.token.forget()
        return super().http_error(status, body, headers)

    def scrub(self, text: str) -> str:
        text = self.token.scrub(text)
        for secret in self._hidden:
            text = text.replace(secret, "[redacted]")
        return super().scrub(text)

    # --- files -------------------------------------------------------------------

    def _ids_key(self, name: str) -> str:
        return f"{self._blob_prefix}-{name}.ids"

    async def upload_file(self, file: InputFile) -> str:
        """Translate and stream the file to Cloud Storage, writing its custom_id map; a
        line that can't be translated stops both (the session is cancelled: no object)."""
        name, model = self.config.file_model(file, self.endpoints)
        match = _INPUT_NAME.fullmatch(file.filename)
        if match is None:
            raise ProviderError("bad_request", "The input file's name can't be staged.")
        bucket, prefix = self.config.input_location
        key = _join(prefix, file.filename)
        ids_key = self._ids_key(match.group(1))
        ids = IdsWriter(self.blobs.writer(ids_key))

        def transform(line: dict[str, Any]) -> dict[str, Any]:
            custom_id = str(line.get("custom_id"))
            if file.endpoint == EMBEDDINGS:
                instance = translate.embedding_instance(line)
                ids.add(custom_id, translate.instance_key(instance))
                return instance
            return translate.request_line(line, ids.add(custom_id))

        async def body() -> AsyncIterator[bytes]:
            async for chunk in rewritten(file, transform):
                await ids.flush()
                yield chunk

        try:
            size = await self.gcs.upload(bucket, key, body())
            await ids.commit()
        except BaseException:
            await ids.abort()
            raise
        facts: dict[str, Any] = {"model": name, "vertex_model": model, "endpoint": file.endpoint}
        facts |= {"bucket": bucket, "key": key, "ids": ids_key, "lines": ids.count}
        await self.state.save(file.filename, facts | {"bytes": size})
        return file.filename

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        name, part = _split(upstream_file_id)
        if part is not None:
            facts = await self._output_facts(name)
            # One output folder, two views: only a read tells each one's size.
            created = facts.get("created") or 0
            return UpstreamFile(upstream_file_id, None, created, f"{part}.jsonl")
        bucket, key = await self._input_location(name)
        found = await self.gcs.metadata(bucket, key)
        if found is None:
            raise ProviderError("not_found", "The provider has no such file.")
        size = found.get("size")
        return UpstreamFile(
            name,
            int(size) if isinstance(size, str) and size.isdigit() else None,
            rfc3339(found.get("timeCreated")) or 0,
            name,
        )

    async def _input_location(self, name: str) -> tuple[str, str]:
        facts = await self.state.load(name)
        if facts is not None:
            return facts["bucket"], facts["key"]
        bucket, prefix = self.config.input_location
        return bucket, _join(prefix, name)

    async def delete_file(self, upstream_file_id: str) -> None:
        """A staged input goes at once (with its map); a job's outputs once both result
        views are."""
        name, part = _split(upstream_file_id)
        if part is None:
            await self.gcs.delete(*await self._input_location(name))
            facts = await self.state.load(name)
            if facts is not None:
                await self.blobs.delete(facts["ids"])
            await self.state.delete(name)
            return
        facts = await self._output_facts(name)
        if not await views_deleted(self.state, name, part, facts.get("views", VIEWS)):
            return
        folder = gs_location(facts.get("dir") or "")
        if folder is not None:
            bucket, prefix = folder
            async for item in self.gcs.list(bucket, prefix + "/"):
                await self.gcs.delete(bucket, item["name"])
        if facts.get("ids"):
            await self.blobs.delete(facts["ids"])
        await self.state.delete(f"job:{name}")

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        bucket, prefix = self.config.input_location
        oldest = since - CLOCK_SKEW_SECONDS
        found = []
        async for item in self.gcs.list(bucket, _join(prefix, "")):
            base = item["name"].removeprefix(_join(prefix, ""))
            match = _INPUT_NAME.fullmatch(base)
            created = rfc3339(item.get("timeCreated"))
            if match and (created is None or created >= oldest):
                found.append((match.group(1), base))
        return found

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self._content(upstream_file_id)

    @asynccontextmanager
    async def _content(self, upstream_file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        name, part = results_view(upstream_file_id, JOB_ID, _INPUT_NAME)
        facts = await self._output_facts(name)
        folder = gs_location(facts.get("dir") or "")
        bucket, files = "", []
        if folder is not None:
            bucket, files = folder[0], await prediction_files(self.gcs, *folder)
        embeddings = facts.get("endpoint") == EMBEDDINGS
        ids: CustomIds | InstanceIds = InstanceIds() if embeddings else CustomIds()
        if facts.get("ids"):
            try:
                ids = await load_ids(self.blobs, facts["ids"], embeddings=embeddings)
            except FileNotFoundError:
                pass  # a job not made here: its lines can't be matched to custom_ids
        yield view_lines(
            self.gcs,
            bucket,
            files,
            ids,
            output=part == "output",
            embeddings=embeddings,
            job=name,
            facts=facts,
            scrub=self.scrub,
        )

    # --- batches -----------------------------------------------------------------

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        facts = await self.state.load(request.input_file_id)
        if facts is None:
            raise ProviderError("not_found", "The input file is not known to this provider.")
        if facts["endpoint"] != request.endpoint:
            uploaded = facts["endpoint"]
            message = f"The input file was uploaded for {uploaded}, not {request.endpoint}."
            raise ProviderError("bad_request", message)
        tag = request.gateway_batch_id or f"batch-{secrets.token_hex(12)}"
        # The job's own copy of the map: the input (and its map) may be deleted while
        # the job's results are still read.
        ids_key = self._ids_key(tag)
        try:
            await copy_blob(self.blobs, facts["ids"], ids_key)
        except FileNotFoundError:
            raise ProviderError("not_found", "The input file's map is gone.") from None
        out_bucket, out_prefix = self.config.output_location
        body = {
            "displayName": tag,
            "model": facts["vertex_model"],
            "inputConfig": {
                "instancesFormat": "jsonl",
                "gcsSource": {"uris": [gs_uri(facts["bucket"], facts["key"])]},
            },
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": gs_uri(out_bucket, _join(out_prefix, tag))},
            },
            "labels": {GATEWAY_LABEL: encode_tag(tag)},
        }
        try:
            data = await self.request_json("POST", self._jobs, json=body)
        except ProviderError as exc:
            if not exc.ambiguous:  # certainly no job: its map copy is nobody's
                await self.blobs.delete(ids_key)
            raise
        job = parse_job(data)
        mine = {"ids": ids_key, "model": facts["model"], "lines": facts["lines"]}
        mine["endpoint"] = facts["endpoint"]
        await self.state.save(f"job:{job.id}", mine)
        return await self._view(job)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        return await self._view(await self._job(upstream_id))

    async def _job(self, upstream_id: str) -> VertexJob:
        if not JOB_ID.fullmatch(upstream_id):
            raise ProviderError("not_found", "No such batch at the provider.")
        return parse_job(await self.request_json("GET", f"{self._jobs}/{upstream_id}"))

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        if not JOB_ID.fullmatch(upstream_id):
            raise ProviderError("not_found", "No such batch at the provider.")
        await self.request_json("POST", f"{self._jobs}/{upstream_id}:cancel")
        view = await self.get_batch(upstream_id)
        if not view.terminal:  # Vertex stops the job asynchronously
            view.status = "cancelling"
        return view

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        """Every job made since `since` (less the clock skew) whose display name and label
        carry the same gateway id; every page is read, and a page that can't be read
        raises, so a create is never made again on a partial list."""
        oldest = since - CLOCK_SKEW_SECONDS
        query = {"filter": since_filter(oldest), "pageSize": "100"}
        found = []
        while True:
            page = await self.request_json("GET", self._jobs, params=query)
            items = page.get("batchPredictionJobs") or []
            if not isinstance(items, list):
                raise ProviderError("retryable", "the provider sent an unreadable list")
            for item in items:
                if not isinstance(item, Mapping):
                    continue
                job = parse_job(item)
                if job.tagged and (job.created is None or job.created >= oldest):
                    found.append((job.tagged, await self._view(job)))
            token = page.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return found
            query["pageToken"] = token

    async def _job_facts(self, job: VertexJob) -> dict[str, Any]:
        """What create_batch noted about the job; for a job found by its tag after a lost
        answer, what its resource tells (the map copy was made before the create)."""
        key = f"job:{job.id}"
        facts = await self.state.load(key)
        if facts is None:
            facts = {"model": self.config.client_name(job.model), "lines": None}
            facts["ids"] = self._ids_key(job.tagged) if job.tagged else None
            embeddings = job.model is not None and is_embedding_model(job.model)
            facts["endpoint"] = EMBEDDINGS if embeddings else CHAT
            await self.state.save(key, facts)
        return facts

    async def _output_facts(self, job_id: str) -> dict[str, Any]:
        """The facts of an ended job's results, asking Vertex when they were not noted."""
        facts = await self.state.load(f"job:{job_id}")
        if facts is None or "dir" not in facts:
            await self._view(await self._job(job_id))
            facts = await self.state.load(f"job:{job_id}") or {}
        return facts

    async def _view(self, job: VertexJob) -> UpstreamBatch:
        facts = await self._job_facts(job)
        view = job_view(job, facts.get("model"), facts.get("lines"), self.scrub)
        if job.terminal and job.output_dir and facts.get("dir") != job.output_dir:
            # What reading the results needs, kept so every read gives the same bytes, and
            # the views shown (the outputs go once those are deleted).
            views = shown_views(view.output_file_id, view.error_file_id)
            facts |= {"dir": job.output_dir, "created": job.ended, "status": job.status}
            await self.state.save(f"job:{job.id}", facts | {"views": views})
        return view


def _split(upstream_file_id: str) -> tuple[str, str | None]:
    """`file-x.jsonl` -> (it, None); `<job id>#output` -> (job id, "output")."""
    return split_named(upstream_file_id, JOB_ID, _INPUT_NAME)


def _settings(name: str, url: str, config: VertexProviderConfig) -> HTTPSettings:
    egress = build_egress(
        name, url, proxy=config.proxy, ca_file=config.ca_file, tls_verify=config.tls_verify
    )
    return HTTPSettings(
        url,
        connect_timeout=config.connect_timeout_seconds,
        read_timeout=config.read_timeout_seconds,
        egress=egress,
        transport=config.transport,
    )


def build(context: ProviderContext, config: VertexProviderConfig) -> VertexProvider:
    source = google_token_source(
        config.credentials_file,
        proxy=config.proxy,
        ca_file=config.ca_file,
        tls_verify=config.tls_verify,
    )
    return VertexProvider(
        context.name,
        context.endpoints,
        _settings(context.name, config.api_url, config),
        _settings(context.name, config.storage_url, config),
        config=config,
        state=context.state,
        blobs=context.blobs,
        token_source=source,
    )


TYPE = ProviderType("vertex", VertexProviderConfig, build)
