"""`type: mistral`: OpenAI batches run as Mistral batch jobs (`/v1/files`, `/v1/batch/jobs`).

Shapes follow Mistral's docs (capabilities/batch, the API reference for files and batch
jobs) and its official SDK (`mistralai/client-python`, `models/batchjob.py`,
`createbatchjobrequest.py`, `batchjobstatus.py`, `createfileresponse.py`,
`jobs_api_routes_batch_get_batch_jobsop.py`):

- Input lines are `{custom_id, body}` (no method or url). A job runs ONE model, named on
  the job, so `body.model` is taken out of each line on upload (the docs' examples carry
  none) and remembered in the adapter's state under the uploaded file's id.
- `POST /v1/batch/jobs {input_files, model, endpoint, metadata, timeout_hours: 24}` (the
  24 h window). Jobs carry metadata, so a create of unknown outcome is found again by
  the gateway's tag (`lookup = "tag"`) in `GET /v1/batch/jobs` (page / page_size,
  newest first, `created_after`); every page up to the window is read, and a page that
  can't be read raises.
- Statuses: QUEUED -> validating, RUNNING -> in_progress, SUCCESS -> completed,
  FAILED -> failed, TIMEOUT_EXCEEDED -> expired, CANCELLATION_REQUESTED -> cancelling,
  CANCELLED -> cancelled. Counts: total/succeeded/failed_requests.
- Result lines (`{id, custom_id, response: {status_code, body}, error}`) are rewritten
  to OpenAI's line shape as they stream; a non-2xx body (Mistral's
  `{object: "error", message, type, param, code}`, or FastAPI's `{detail: [...]}`)
  becomes OpenAI's error envelope.

A file whose lines name several models (`mixed_models`):
- `reject`: the create fails with a 400 naming the models.
- `split` (default): one upload and one job per model. The gateway keeps one upstream id
  per batch, so the first job's id stands for the group and the state under it lists
  every job (model, job id, input file id). Retrieve and cancel act on every job:
  counts are summed; the status is `cancelling` while any job is, else `in_progress`
  while any runs, else `validating` while any waits; once all have ended: `cancelled`
  if any was, else `expired` if any timed out, else `completed` if any succeeded,
  else `failed`. Output and error files are composite ids (`mistral-output-<job>`,
  `mistral-errors-<job>`) whose content is each job's file in turn. A split create
  is resumable: parts are tagged `gateway_part` / `gateway_parts`, and a create made
  again after an unknown outcome first lists the parts already made, so no model runs
  twice; a lookup reports the batch only once every part is found.
A route can't carry provider options yet, so this is a provider setting: two provider
entries on the same account, one per setting, give each route its own choice.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson

from providers.base import (
    CLOCK_SKEW_SECONDS,
    GATEWAY_FILE_NAME,
    TERMINAL_STATUSES,
    BatchRequest,
    ByteStream,
    InputFile,
    ProviderError,
    UpstreamBatch,
    UpstreamFile,
)
from providers.config import Endpoint, HttpUrl, RemoteConfig
from providers.context import ProviderContext, ProviderType, StateStore
from providers.http import UUID_ID, path_id
from providers.lines import rewritten
from providers.mistral.translate import (
    ENDPOINTS,
    ERRORS_PREFIX,
    JOBS,
    OUTPUT_PREFIX,
    PAGE_SIZE,
    PART,
    PARTS,
    TIMEOUT_HOURS,
    Job,
    Json,
    _int,
    _only,
    _openai_error,
    _translated,
    group_batch,
    job_to_batch,
    parse_job,
    to_mistral_line,
)
from providers.openai_compat import OpenAICompatProvider
from providers.transport import HTTPSettings

__all__ = ["MistralProvider", "MistralProviderConfig", "TYPE"]


class MistralProvider(OpenAICompatProvider):
    """Files as OpenAI's (`/files`, multipart, `purpose=batch`); batches as Mistral jobs."""

    id_patterns = (UUID_ID,)  # job and file ids

    def __init__(
        self,
        name: str,
        endpoints: frozenset[str],
        http: HTTPSettings,
        *,
        api_key: str,
        state: StateStore,
        mixed_models: Literal["split", "reject"] = "split",
    ) -> None:
        super().__init__(name, endpoints & set(ENDPOINTS), http, api_key=api_key)
        self.state = state
        self.mixed_models = mixed_models

    def error_detail(self, body: bytes) -> tuple[str | None, str | None]:
        """Mistral's `{object: "error", message, type, code}` and `{detail: [...]}` too."""
        message, code = super().error_detail(body)
        if message is not None:
            return message, code
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, None
        if not isinstance(data, dict):
            return None, None
        error = _openai_error(data, 400)["error"]
        known = isinstance(data.get("message"), str) or "detail" in data
        return (error["message"] if known else None), error["code"]

    # Uploads

    async def upload_file(self, file: InputFile) -> str:
        models = sorted(file.models)
        if len(models) > 1 and self.mixed_models == "reject":
            message = (
                f"Mistral runs one model per batch job, and this file uses {len(models)}: "
                f"{', '.join(models)}. Split the file by model (this provider is set to "
                "mixed_models: reject)."
            )
            raise ProviderError("bad_request", message, code="mixed_models")
        parts: list[tuple[str | None, str]] = []
        if len(models) <= 1:
            upload = await self._upload(file.filename, rewritten(file, to_mistral_line))
            parts.append((models[0] if models else None, upload))
        else:
            stem = file.filename.removesuffix(".jsonl")
            for i, model in enumerate(models):
                name = file.filename if i == 0 else f"{stem}.part{i}.jsonl"
                parts.append((model, await self._upload(name, rewritten(file, _only(model)))))
        first = parts[0][1]
        await self.state.save(first, {"parts": parts})
        return first

    async def _parts(self, input_file_id: str) -> list[tuple[str, str]]:
        state = await self.state.load(input_file_id)
        parts = state.get("parts") if state else None
        if not parts or any(not isinstance(model, str) for model, _ in parts):
            # Uploaded before this adapter kept state, or without a model: upload again.
            raise ProviderError("not_found", "The provider's copy of the input file is unknown.")
        return [(model, file_id) for model, file_id in parts]

    async def delete_file(self, upstream_file_id: str) -> None:
        state = await self.state.load(upstream_file_id)
        for _, file_id in (state or {}).get("parts") or [[None, upstream_file_id]]:
            await super().delete_file(file_id)
        await self.state.delete(upstream_file_id)

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        found = []
        async for item in self._paged("/files", {"purpose": "batch"}, since, ordered=False):
            name, file_id = item.get("filename"), item.get("id")
            if isinstance(name, str) and isinstance(file_id, str):
                if match := GATEWAY_FILE_NAME.fullmatch(name):
                    found.append((match.group(1), file_id))
        return found

    # Jobs

    async def _create_job(
        self, request: BatchRequest, model: str, file_id: str, extra: Mapping[str, str]
    ) -> Job:
        body: Json = {
            "input_files": [file_id],
            "model": model,
            "endpoint": ENDPOINTS[request.endpoint],
            "timeout_hours": TIMEOUT_HOURS,
        }
        if metadata := request.tagged_metadata():
            body["metadata"] = {**metadata, **extra}
        return self._job(await self.request_json("POST", JOBS, json=body))

    def _job(self, data: Mapping[str, Any]) -> Job:
        job = parse_job(data)
        for error in job.errors:
            error["message"] = self.scrub(error["message"])
        return job

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        if request.endpoint not in ENDPOINTS or not self.supports(request.endpoint):
            raise ProviderError(
                "bad_request", f"Mistral does not run '{request.endpoint}' batches."
            )
        parts = await self._parts(request.input_file_id)
        if len(parts) == 1:
            return job_to_batch(await self._create_job(request, *parts[0], {}))
        return await self._create_split(request, parts)

    async def _create_split(
        self, request: BatchRequest, parts: list[tuple[str, str]]
    ) -> UpstreamBatch:
        """One job per model; resumed (never repeated) by a create made again."""
        key = f"create:{request.gateway_batch_id}" if request.gateway_batch_id else None
        pending = (await self.state.load(key) if key else None) or {"since": int(time.time())}
        made: dict[int, Job] = {}
        if pending.get("attempted") and request.gateway_batch_id:
            async for job in self._jobs(pending["since"]):
                if job.tag == request.gateway_batch_id and (part := job.part()) is not None:
                    made.setdefault(part[0], job)
        for index, (model, file_id) in enumerate(parts):
            if index in made:
                continue
            if key:
                await self.state.save(key, pending | {"attempted": True})
            extra = {PART: str(index), PARTS: str(len(parts))}
            try:
                made[index] = await self._create_job(request, model, file_id, extra)
            except ProviderError as exc:
                if exc.retryable and made and key:
                    # Some parts run: a create made again must resume, not start over,
                    # so the gateway is told the outcome is unknown.
                    exc.ambiguous = True
                elif not exc.ambiguous:
                    # Refused for good (a model unknown, the key refused): stop the parts.
                    await self._cancel_quietly(list(made.values()))
                    if key:
                        await self.state.delete(key)
                raise
        jobs = [made[i] for i in range(len(parts))]
        await self._save_group(jobs, parts)
        if key:
            await self.state.delete(key)
        return group_batch(jobs[0].id, jobs)

    async def _save_group(self, jobs: list[Job], parts: list[tuple[str, str]]) -> None:
        group = [
            {"model": m, "job": j.id, "input_file": f}
            for j, (m, f) in zip(jobs, parts, strict=True)
        ]
        await self.state.save(jobs[0].id, {"jobs": group})

    async def _cancel_quietly(self, jobs: list[Job]) -> None:
        """Parts made before a definite failure: the batch won't exist, so they stop."""
        for job in jobs:
            try:
                await self.request_json("POST", f"{JOBS}/{path_id(job.id)}/cancel")
            except ProviderError:
                pass

    async def _group(self, upstream_id: str) -> list[str] | None:
        state = await self.state.load(upstream_id)
        jobs = state.get("jobs") if state else None
        return [entry["job"] for entry in jobs] if jobs else None

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        group = await self._group(upstream_id)
        if group is None:
            return job_to_batch(
                self._job(await self.request_json("GET", f"{JOBS}/{path_id(upstream_id)}"))
            )
        jobs = [self._job(await self.request_json("GET", f"{JOBS}/{path_id(j)}")) for j in group]
        return group_batch(upstream_id, jobs)

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        group = await self._group(upstream_id)
        if group is None:
            path = f"{JOBS}/{path_id(upstream_id)}/cancel"
            return job_to_batch(self._job(await self.request_json("POST", path)))
        jobs = []
        for job_id in group:
            job = self._job(await self.request_json("GET", f"{JOBS}/{path_id(job_id)}"))
            if job.status not in TERMINAL_STATUSES and job.status != "cancelling":
                job = self._job(await self.request_json("POST", f"{JOBS}/{path_id(job_id)}/cancel"))
            jobs.append(job)
        return group_batch(upstream_id, jobs)

    async def find_batch(self, gateway_batch_id: str, since: int) -> UpstreamBatch | None:
        found = [job async for job in self._jobs(since) if job.tag == gateway_batch_id]
        return await self._settled(found)

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        by_tag: dict[str, list[Job]] = {}
        async for job in self._jobs(since):
            if job.tag is not None:
                by_tag.setdefault(job.tag, []).append(job)
        out = []
        for tag, jobs in by_tag.items():
            if (batch := await self._settled(jobs)) is not None:
                out.append((tag, batch))
        return out

    async def _settled(self, jobs: list[Job]) -> UpstreamBatch | None:
        """The batch a tag's jobs make: a whole job, or a split create with every part."""
        whole = [job for job in jobs if job.part() is None]
        if whole:
            return job_to_batch(whole[0])
        parts: dict[int, Job] = {}
        count = 0
        for job in jobs:
            index, count = job.part() or (0, 0)
            parts.setdefault(index, job)
        if not parts or sorted(parts) != list(range(count)):
            return None  # not every part made: a create made again resumes the rest
        ordered = [parts[i] for i in range(count)]
        if await self._group(ordered[0].id) is None:
            group = [{"model": j.model, "job": j.id, "input_file": None} for j in ordered]
            await self.state.save(ordered[0].id, {"jobs": group})
        return group_batch(ordered[0].id, ordered)

    async def _jobs(self, since: int) -> AsyncIterator[Job]:
        created_after = datetime.fromtimestamp(since - CLOCK_SKEW_SECONDS, UTC).isoformat()
        query = {"order_by": "-created", "created_after": created_after}
        async for item in self._paged(JOBS, query, since, ordered=True):
            try:
                yield self._job(item)
            except ProviderError:
                continue

    async def _paged(
        self, path: str, query: Mapping[str, str], since: int, *, ordered: bool
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Every item of a paged list (`page`, `page_size`, `total`) made since `since`
        less the clock skew; `ordered` lists are newest first, so reading stops at the
        first older item. A page that can't be read raises: a lookup is never a guess."""
        oldest = since - CLOCK_SKEW_SECONDS
        page = 0
        seen = 0
        while True:
            params = {**query, "page": str(page), "page_size": str(PAGE_SIZE)}
            answer = await self.request_json("GET", path, params=params)
            data, total = answer.get("data"), answer.get("total")
            if not isinstance(data, list):
                raise ProviderError("retryable", "the provider sent an unreadable list")
            for item in data:
                if not isinstance(item, Mapping):
                    continue
                created = _int(item.get("created_at"))
                if created is not None and created < oldest:
                    if ordered:
                        return
                    continue
                yield item
            seen += len(data)
            if not data or len(data) < PAGE_SIZE or (isinstance(total, int) and seen >= total):
                return
            page += 1

    # Result files

    def _composite(self, file_id: str) -> tuple[str, str] | None:
        for prefix, key in ((OUTPUT_PREFIX, "output_file"), (ERRORS_PREFIX, "error_file")):
            if file_id.startswith(prefix):
                return file_id.removeprefix(prefix), key
        return None

    async def _part_files(self, group_id: str, key: str) -> list[str]:
        group = await self._group(group_id)
        if group is None:
            raise ProviderError("not_found", "The provider has no such file.")
        files = []
        for job_id in group:
            job = self._job(await self.request_json("GET", f"{JOBS}/{path_id(job_id)}"))
            if (file_id := getattr(job, key)) is not None:
                files.append(file_id)
        return files

    async def get_file(self, upstream_file_id: str) -> UpstreamFile:
        composite = self._composite(upstream_file_id)
        if composite is None:
            return await super().get_file(upstream_file_id)
        infos = []
        for file_id in await self._part_files(*composite):
            infos.append(await super().get_file(file_id))
        sizes = [info.bytes for info in infos]
        return UpstreamFile(
            id=upstream_file_id,
            bytes=None if None in sizes else sum(s or 0 for s in sizes),
            created_at=max((info.created_at for info in infos), default=0),
            filename=f"{upstream_file_id}.jsonl",
        )

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        return self._content(upstream_file_id)

    @asynccontextmanager
    async def _content(self, upstream_file_id: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Each part's file opened on entry (so a missing one raises before any byte),
        then read in turn, every line rewritten to OpenAI's shape."""
        composite = self._composite(upstream_file_id)
        files = await self._part_files(*composite) if composite else [upstream_file_id]
        async with AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(self.stream(f"/files/{path_id(f)}/content"))
                for f in files
            ]

            async def chunks() -> AsyncIterator[bytes]:
                for stream in streams:
                    async for out in _translated(stream, self.scrub):
                        yield out

            yield chunks()


class MistralProviderConfig(RemoteConfig):
    """Mistral's Batch API; `mixed_models` says what a file naming several models gets."""

    # Mistral: 1,000,000 requests per batch, 512 MB per uploaded file.
    batch_limits: ClassVar[tuple[int, int]] = (1_000_000, 512 * 1024 * 1024)

    type: Literal["mistral"]
    base_url: HttpUrl = "https://api.mistral.ai/v1"
    endpoints: tuple[Endpoint, ...] | None = tuple(ENDPOINTS)
    mixed_models: Literal["split", "reject"] = "split"


def build(context: ProviderContext, config: MistralProviderConfig) -> MistralProvider:
    assert context.http is not None and (key := config.secret_key()) is not None
    return MistralProvider(
        context.name,
        context.endpoints,
        context.http,
        api_key=key,
        state=context.state,
        mixed_models=config.mixed_models,
    )


TYPE = ProviderType("mistral", MistralProviderConfig, build)
