"""One measured transfer in a process of its own, for items 9-12 (bench/staging.py runs it).

    python -m bench.staging_worker '{"op": "bedrock-upload", ...}'

The last line printed is one JSON object: seconds, bytes, and the process's peak RSS
growth across the measured call: VmHWM after minus VmRSS before, with VmHWM reset first
(`/proc/self/clear_refs`; where the kernel refuses, VmHWM after minus VmRSS before, as
bench/harness.py measures a fresh gateway). Clients are made and make one call before
the measurement: their one-off cost (botocore's service models, google-auth) is the
process's, not the transfer's.

`{"op": "token-server", "port", "key_file", "storage_url", "project"}` serves a Google
OAuth token endpoint (tests/fakes/vertex_upstream.py, which checks the service account's
signed JWT) until stopped, for the Vertex adapter's google-auth credentials.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson

CHUNK = 256 * 1024
CHAT = "/v1/chat/completions"
Spec = dict[str, Any]


def status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


async def measured(work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    gc.collect()
    reset = reset_peak()
    before = status_kb("VmRSS")
    t0 = time.perf_counter()
    result = await work()
    seconds = time.perf_counter() - t0
    after = status_kb("VmHWM")
    return {
        **result,
        "seconds": seconds,
        "rss_before_kb": before,
        "hwm_after_kb": after,
        "growth_kb": after - before,
        "hwm_reset": reset,
    }


@asynccontextmanager
async def file_chunks(path: str, size: int = CHUNK) -> AsyncIterator[AsyncIterator[bytes]]:
    with open(path, "rb") as fh:

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := fh.read(size):
                yield chunk

        yield chunks()


async def drain(opened: Any) -> dict[str, Any]:
    """Read a ByteStream to its end, keeping only its size and line count."""
    n = lines = 0
    async with opened as chunks:
        async for chunk in chunks:
            n += len(chunk)
            lines += chunk.count(b"\n")
    return {"bytes": n, "lines": lines}


def input_file(spec: Spec) -> Any:
    from providers.base import InputFile

    path = Path(spec["input"])
    name = f"file-{spec['file_tag']}.jsonl"
    models = (spec["model"],)
    return InputFile(path, name, path.stat().st_size, spec["lines"], CHAT, models)


# --- Bedrock (S3 on moto) ----------------------------------------------------------------


def s3_client(spec: Spec) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    return get_session().create_client(
        "s3", endpoint_url=spec["s3_endpoint_url"], region_name=spec["region"], config=config
    )


async def warm_s3(s3: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        await s3.head_object(Bucket=bucket, Key="warm-up")
    except ClientError:
        pass


def bedrock_adapter(spec: Spec) -> Any:
    from gateway.blobs import LocalBlobs
    from providers.bedrock import BedrockProvider, BedrockProviderConfig
    from providers.registry import build_provider
    from tests.support import MemoryState

    config = BedrockProviderConfig.model_validate(spec["config"])
    state = MemoryState()
    provider = build_provider(
        "bedrock", config, state=state, blobs=LocalBlobs(Path(spec["blob_dir"]))
    )
    assert isinstance(provider, BedrockProvider)
    return provider, state


async def bedrock_upload(spec: Spec) -> dict[str, Any]:
    provider, _ = bedrock_adapter(spec)
    bucket, prefix = spec["bucket"], spec["prefix"]
    try:
        await provider.storage.head(bucket, "warm-up")
        file = input_file(spec)
        result = await measured(lambda: _upload(provider, file))
        found = await provider.storage.head(bucket, f"{prefix}/{file.filename}")
        result["staged_bytes"] = found[0] if found else 0
        return result
    finally:
        await provider.close()


async def _upload(provider: Any, file: Any) -> dict[str, Any]:
    await provider.upload_file(file)
    return {"bytes": file.bytes}


async def bedrock_read(spec: Spec) -> dict[str, Any]:
    provider, state = bedrock_adapter(spec)
    job = spec["job"]
    facts = {"model": spec["model"], "family": "anthropic", "endpoint": CHAT}
    facts |= {"out": [spec["bucket"], spec["key"]], "created": int(time.time())}
    await state.save(job, facts | {"views": ["output", "errors"]})
    try:
        await provider.storage.head(spec["bucket"], "warm-up")
        return await measured(lambda: drain(provider.open_file_content(f"{job}#output")))
    finally:
        await provider.close()


async def s3_upload(spec: Spec) -> dict[str, Any]:
    """Plain aiobotocore multipart upload of the input file's bytes, part by part."""
    async with s3_client(spec) as s3:
        await warm_s3(s3, spec["bucket"])

        async def upload() -> dict[str, Any]:
            bucket, key, size = spec["bucket"], spec["key"], spec["part_bytes"]
            created = await s3.create_multipart_upload(Bucket=bucket, Key=key)
            upload_id, n = created["UploadId"], 0
            parts: list[dict[str, Any]] = []
            with open(spec["input"], "rb") as fh:
                while part := fh.read(size):
                    number = len(parts) + 1
                    sent = await s3.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                    )
                    parts.append({"ETag": sent["ETag"], "PartNumber": number})
                    n += len(part)
            await s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return {"bytes": n}

        return await measured(upload)


async def s3_read(spec: Spec) -> dict[str, Any]:
    async with s3_client(spec) as s3:
        await warm_s3(s3, spec["bucket"])

        async def read() -> dict[str, Any]:
            answer = await s3.get_object(Bucket=spec["bucket"], Key=spec["key"])
            n = 0
            async with answer["Body"] as body:
                while chunk := await body.read(CHUNK):
                    n += len(chunk)
            return {"bytes": n}

        return await measured(read)


# --- Vertex (Cloud Storage emulator) -----------------------------------------------------


def vertex_adapter(spec: Spec) -> Any:
    from gateway.blobs import LocalBlobs
    from providers.registry import build_provider
    from providers.vertex import VertexProvider, VertexProviderConfig
    from tests.support import MemoryState

    config = VertexProviderConfig.model_validate(spec["config"])
    state, blobs = MemoryState(), LocalBlobs(Path(spec["blob_dir"]))
    provider = build_provider("vertex", config, state=state, blobs=blobs)
    assert isinstance(provider, VertexProvider)
    return provider, state, blobs


async def warm_vertex(provider: Any, bucket: str) -> None:
    await provider.token.headers()  # google-auth: the key is read, a token fetched
    await provider.gcs.metadata(bucket, "warm-up")


async def vertex_upload(spec: Spec) -> dict[str, Any]:
    provider, state, _ = vertex_adapter(spec)
    try:
        await warm_vertex(provider, spec["bucket"])
        file = input_file(spec)
        result = await measured(lambda: _upload(provider, file))
        facts = await state.load(file.filename)
        result["staged_bytes"] = (facts or {}).get("bytes", 0)
        return result
    finally:
        await provider.close()


async def vertex_read(spec: Spec) -> dict[str, Any]:
    from bench.outputs import custom_id
    from providers.vertex.ids import IdsWriter

    provider, state, blobs = vertex_adapter(spec)
    job, ids_key = spec["job"], "vertex-bench-job.ids"
    ids = IdsWriter(blobs.writer(ids_key))  # the job's custom_id map, as upload_file writes it
    for i in range(spec["lines"]):
        ids.add(custom_id(i))
        await ids.flush()
    await ids.commit()
    facts = {"model": spec["model"], "lines": spec["lines"], "endpoint": CHAT, "ids": ids_key}
    facts |= {"dir": spec["dir"], "created": int(time.time()), "status": "completed"}
    await state.save(f"job:{job}", facts | {"views": ["output", "errors"]})
    try:
        await warm_vertex(provider, spec["bucket"])
        return await measured(lambda: drain(provider.open_file_content(f"{job}#output")))
    finally:
        await provider.close()


async def gcs_upload(spec: Spec) -> dict[str, Any]:
    """Plain aiohttp resumable upload (Cloud Storage JSON API) of the input file's bytes."""
    import aiohttp

    base, bucket, size = spec["storage_url"], spec["bucket"], spec["chunk_bytes"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/storage/v1/b/{bucket}/o?maxResults=1") as resp:
            await resp.read()

        async def upload() -> dict[str, Any]:
            start = f"{base}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&name={spec['key']}"
            headers = {"Content-Type": "application/json"}
            async with http.post(start, data=b"{}", headers=headers) as resp:
                session = resp.headers["Location"]
            total, offset = Path(spec["input"]).stat().st_size, 0
            with open(spec["input"], "rb") as fh:
                while offset < total:
                    data = fh.read(size)
                    end = offset + len(data)
                    span = f"bytes {offset}-{end - 1}/{total if end == total else '*'}"
                    async with http.put(session, data=data, headers={"Content-Range": span}) as r:
                        await r.read()
                        assert r.status in (200, 201, 308), r.status
                    offset = end
            return {"bytes": total}

        return await measured(upload)


async def gcs_read(spec: Spec) -> dict[str, Any]:
    """Plain aiohttp downloads (`alt=media`) of the prediction files."""
    from urllib.parse import quote

    import aiohttp

    base, bucket = spec["storage_url"], spec["bucket"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/storage/v1/b/{bucket}/o?maxResults=1") as resp:
            await resp.read()

        async def read() -> dict[str, Any]:
            n = 0
            for name in spec["files"]:
                url = f"{base}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
                async with http.get(url) as resp:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        n += len(chunk)
            return {"bytes": n}

        return await measured(read)


# --- accounting ------------------------------------------------------------------------


async def tally(spec: Spec) -> dict[str, Any]:
    from gateway.accounting import ModelTally, tally_lines

    async def work() -> dict[str, Any]:
        tallies: dict[str, ModelTally] = {}
        async with file_chunks(spec["input"]) as chunks:
            await tally_lines(chunks, tallies, fallback_model="gpt-4o-mini")
        lines = sum(t.lines_succeeded + t.lines_failed for t in tallies.values())
        tokens = sum(t.total_tokens for t in tallies.values())
        return {"bytes": Path(spec["input"]).stat().st_size, "lines": lines, "tokens": tokens}

    return await measured(work)


async def plain_read(spec: Spec) -> dict[str, Any]:
    return await measured(lambda: drain(file_chunks(spec["input"])))


# --- sharding ----------------------------------------------------------------------------

BATCH_ID, ERROR_FILE_ID = "batch_bench_parent", "file-bench-merged-errors"
NO_RESULT = 500  # line i has no result at all when i % 1000 == NO_RESULT


def blobs_with_input(folder: Path, source: str) -> Any:
    """A LocalBlobs folder whose blob `input` is the source file (a hard link: no copy)."""
    from gateway.blobs import LocalBlobs

    blobs = LocalBlobs(folder)
    os.link(source, blobs.path("input"))
    return blobs


async def split(spec: Spec, blobs: Any, prefix: str) -> list[Any]:
    from gateway.shard_files import split_input

    return await split_input(
        partial(blobs.open, "input"),
        lambda i: blobs.writer(f"{prefix}-{i}"),
        lines=spec["lines"],
        size=Path(spec["input"]).stat().st_size,
        max_lines=spec["max_lines"],
        max_bytes=spec["max_bytes"],
    )


async def shard_results(spec: Spec) -> dict[str, Any]:
    """Item 12's setup, untimed: the input split as the measured split splits it, and each
    child's results as a provider leaves them: an output and an error file, one OpenAI line
    (~1 KB) per input line, 1 in 100 an error, 1 in 1,000 none at all (merged as expired)."""
    from bench.outputs import openai_line
    from providers.http import iter_lines

    blobs = blobs_with_input(Path(spec["dir"]), spec["input"])
    slices = await split(spec, blobs, "in")
    n = outputs = errors = 0
    files: list[str] = []
    for i in range(len(slices)):
        out, err = blobs.writer(f"out-{i}"), blobs.writer(f"err-{i}")
        async with blobs.open(f"in-{i}") as chunks:
            async for raw in iter_lines(chunks):
                cid = orjson.loads(raw)["custom_id"]
                if n % 1000 != NO_RESULT:
                    failed = n % 100 == 99
                    await (err if failed else out).write(openai_line(n, cid=cid))
                    errors += failed
                    outputs += not failed
                n += 1
        await out.commit()
        await err.commit()
        await blobs.delete(f"in-{i}")  # the measured split writes its own
        files += [str(blobs.path(f"out-{i}")), str(blobs.path(f"err-{i}"))]
    await blobs.delete("input")
    result_bytes = sum(Path(f).stat().st_size for f in files)
    return {
        "children": len(slices),
        "lines": n,
        "outputs": outputs,
        "errors": errors,
        "missing": n - outputs - errors,
        "result_bytes": result_bytes,
        "result_files": files,
    }


async def merge(spec: Spec, blobs: Any, results: Any) -> dict[str, Any]:
    from gateway.shard_files import ChildFiles, Merger
    from providers.results import EXPIRED

    out, err = blobs.writer("merged-output"), blobs.writer("merged-errors")
    merger = Merger(out, err, BATCH_ID, ERROR_FILE_ID)
    for i in range(spec["children"]):
        child = ChildFiles(
            input=partial(blobs.open, f"child-{i}"),
            output=partial(results.open, f"out-{i}"),
            errors=partial(results.open, f"err-{i}"),
            missing=EXPIRED,
        )
        await merger.add(child)
    await merger.finish()
    await out.commit()
    await err.commit()
    return {
        "bytes": merger.output_bytes + merger.error_bytes,
        "source_bytes": spec["result_bytes"],
        "completed": merger.completed,
        "failed": merger.failed,
        "expired": merger.expired,
    }


async def merged_ids(blobs: Any) -> dict[str, int]:
    """Lines and distinct custom_ids of the merged output and error files."""
    from providers.http import iter_lines

    ids: set[str] = set()
    lines = 0
    for key in ("merged-output", "merged-errors"):
        async with blobs.open(key) as chunks:
            async for raw in iter_lines(chunks):
                ids.add(orjson.loads(raw)["custom_id"])
                lines += 1
    return {"merged_lines": lines, "unique_ids": len(ids)}


async def shard(spec: Spec) -> dict[str, Any]:
    """Split the input into children (`split_input`), then merge the children's results
    (`Merger`), in one process; the merge's RSS growth counts from before the split."""
    from gateway.blobs import LocalBlobs

    folder = Path(tempfile.mkdtemp(prefix="shard-", dir=spec["dir"]))
    try:
        blobs = blobs_with_input(folder, spec["input"])
        results = LocalBlobs(Path(spec["results"]))
        size = Path(spec["input"]).stat().st_size

        async def split_phase() -> dict[str, Any]:
            slices = await split(spec, blobs, "child")
            return {"bytes": size, "children": len(slices), "lines": sum(s.lines for s in slices)}

        cut = await measured(split_phase)
        assert cut["children"] == spec["children"], (cut, spec["children"])
        joined = await measured(lambda: merge(spec, blobs, results))
        joined["growth_kb"] = joined["hwm_after_kb"] - cut["rss_before_kb"]
        return {"split": cut, "merge": joined, **(await merged_ids(blobs))}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def copy(spec: Spec) -> dict[str, Any]:
    """The baseline: plain chunked copies of the same bytes, one file per phase (the input
    for the split; the children's result files, concatenated, for the merge)."""
    folder = Path(tempfile.mkdtemp(prefix="copy-", dir=spec["dir"]))
    phases: dict[str, Any] = {}
    first: int | None = None
    try:
        for name, sources in spec["phases"].items():
            target = folder / name
            phase = await measured(partial(_copy, sources, target))
            first = phase["rss_before_kb"] if first is None else first
            phase["growth_kb"] = phase["hwm_after_kb"] - first
            phases[name] = phase
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return phases


async def _copy(sources: list[str], target: Path) -> dict[str, Any]:
    n = 0
    with open(target, "wb") as out:
        for source in sources:
            with open(source, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    out.write(chunk)
                    n += len(chunk)
    return {"bytes": n}


# --- the token endpoint ------------------------------------------------------------------


async def token_server(spec: Spec) -> dict[str, Any]:
    from aiohttp import web

    from tests.fakes.vertex_upstream import make_vertex_upstream, service_account_key

    key = service_account_key(spec["project"])
    app = make_vertex_upstream(spec["storage_url"], key, project=spec["project"])

    @web.middleware
    async def health(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/health":  # ahead of the fake's own auth gate
            return web.Response(text="ok")
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.insert(0, health)
    folder = Path(spec["key_file"]).parent
    written = key.write(folder, f"http://127.0.0.1:{spec['port']}/token")
    written.replace(spec["key_file"])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", spec["port"]).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return {}


OPS: dict[str, Callable[[Spec], Coroutine[Any, Any, dict[str, Any]]]] = {
    "bedrock-upload": bedrock_upload,
    "bedrock-read": bedrock_read,
    "s3-upload": s3_upload,
    "s3-read": s3_read,
    "vertex-upload": vertex_upload,
    "vertex-read": vertex_read,
    "gcs-upload": gcs_upload,
    "gcs-read": gcs_read,
    "tally": tally,
    "read": plain_read,
    "shard-results": shard_results,
    "shard": shard,
    "copy": copy,
    "token-server": token_server,
}


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    work = OPS[spec["op"]](spec)
    try:
        import uvloop  # the gateway's loop where it is installed (gateway/runtime.py)
    except ImportError:
        result = asyncio.run(work)
    else:
        result = uvloop.run(work)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
