"""Items 9-10: memory and time of the object-store adapters on big files (and the helpers
items 11-12, bench/accountant.py and bench/sharding.py, share).

9. `type: bedrock` against moto's S3 server: a 200 MB input staged (`upload_file`: translated
   to Bedrock records, multipart upload) and a 1 GB `.out` read back through
   `open_file_content("<job>#output")` (translated to OpenAI lines), against plain
   aiobotocore uploads/downloads of the same bytes.
10. `type: vertex` against gcp-storage-emulator, with google-auth tokens from the fake
   token endpoint: the same, with a resumable upload and the predictions files read back,
   against plain aiohttp uploads/downloads of the same bytes.

Each transfer runs in a fresh process (bench/staging_worker.py) measuring its own peak RSS
growth; rounds alternate baseline and adapter; the best time and the largest growth of
the rounds are kept.
"""

from __future__ import annotations

import asyncio
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiobotocore.session import get_session

from bench.data import write_jsonl
from bench.harness import Harness
from bench.outputs import bedrock_out, vertex_predictions
from bench.procs import REPO, Proc, free_port, python
from bench.report import Row, mb

MB = 1_000_000
BEDROCK_UP = "9. bedrock staging upload"
BEDROCK_READ = "9. bedrock output read"
VERTEX_UP = "10. vertex staging upload"
VERTEX_READ = "10. vertex output read"
TALLY = "11. accounting tally_lines"
ACCOUNT = "11. accounting on a gateway"
RETRIEVE = "11. retrieve during accounting"
SHARD_SPLIT = "12. sharding split"
SHARD_MERGE = "12. sharding merge"
STAGING_ROWS = (
    *(BEDROCK_UP, BEDROCK_READ, VERTEX_UP, VERTEX_READ),
    *(TALLY, ACCOUNT, RETRIEVE, SHARD_SPLIT, SHARD_MERGE),
)

KB_50MB, KB_30MB = 50 * 1024, 30 * 1024
REGION = "us-east-1"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
GEMINI = "gemini-2.0-flash-001"
PROJECT = "bench-project"
# Bedrock takes at most 50,000 records a job: a 1 GB output is records of ~20 KB. A Vertex
# line echoes its request: ~5 KB lines make a 1 GB output of about 200,000 requests.
BEDROCK_RECORD = 20_100
VERTEX_LINE = 5_020
VERTEX_FILE = 128 * MB  # Vertex splits a big job's predictions into several files
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench-access-key",
    "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def rate(r: dict[str, Any], key: str = "bytes") -> float:
    return float(r[key]) / MB / r["seconds"]


def size(n: float) -> str:
    return f"{n / MB:,.0f} MB" if n >= 10 * MB else f"{n / MB:.1f} MB"


def best(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest round, with the largest RSS growth of all rounds."""
    fastest = min(rounds, key=lambda r: r["seconds"])
    return {**fastest, "growth_kb": max(r["growth_kb"] for r in rounds)}


class Staging(Harness):
    # processes

    async def worker(self, spec: dict[str, Any], timeout: float = 1200) -> dict[str, Any]:
        """One bench.staging_worker run; its JSON result."""
        argv = [python(), "-m", "bench.staging_worker", orjson.dumps(spec).decode()]
        env = {**os.environ, **AWS_ENV, "PYTHONPATH": str(REPO)}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            message = f"staging worker {spec['op']}: no result in {timeout:.0f} s"
            raise RuntimeError(message) from None
        if proc.returncode != 0:
            raise RuntimeError(f"staging worker {spec['op']} failed:\n{err.decode()[-3000:]}")
        result: dict[str, Any] = orjson.loads(out.decode().strip().splitlines()[-1])
        return result

    async def worker_pairs(
        self, baseline: dict[str, Any], ours: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        base_rounds, our_rounds = [], []
        for _ in range(self.s.rounds):
            base_rounds.append(await self.worker(baseline))
            our_rounds.append(await self.worker(ours))
        return base_rounds, our_rounds

    def start_server(self, name: str, argv: list[str], health: str) -> Proc:
        proc = Proc(name, argv, self.work)
        self.procs.append(proc)
        proc.wait_http(health)
        return proc

    def stop_proc(self, proc: Proc) -> None:
        proc.stop()
        self.procs.remove(proc)

    def transfer_row(
        self,
        name: str,
        ours: list[dict[str, Any]],
        base: list[dict[str, Any]],
        *,
        base_label: str,
        detail: str = "",
        target_kb: int = KB_50MB,
        rate_of: str = "bytes",
    ) -> None:
        o, b = best(ours), best(base)
        r, br = rate(o, rate_of), rate(b)
        self.add(
            Row(
                name,
                f"{r:,.0f} MB/s ({o['seconds']:.1f} s), peak RSS +{mb(o['growth_kb'])}{detail}",
                f"{base_label} {br:,.0f} MB/s ({b['seconds']:.1f} s), +{mb(b['growth_kb'])}",
                f"{r / br:.2f}× plain, {(o['growth_kb'] - b['growth_kb']) / 1024:+.1f} MB RSS",
                f"< {target_kb // 1024} MB RSS",
                o["growth_kb"] < target_kb,
                {"ours": o, "baseline": b, "rounds": ours, "baseline_rounds": base},
            )
        )

    # 9. bedrock

    async def staging_bedrock(self) -> None:
        print("9. bedrock staging (moto S3)", flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        moto = self.start_server("moto", argv, url + "/moto-api/")
        self.notes.append(
            f"item 9: moto {_version('moto')} S3 server on loopback; the adapter with its "
            "default 8 MiB parts; each transfer in a fresh process, peak RSS counted from "
            "after its S3 client's first call"
        )
        try:
            await self._bedrock(url)
        finally:
            self.stop_proc(moto)

    async def _bedrock(self, url: str) -> None:
        s = self.s
        buckets = ("bench-bedrock-in", "bench-bedrock-out")
        job, tag = "b3nchj0b0001", "b" * 24
        out_key = f"results/{job}/file-{tag}.jsonl.out"
        source = self.work / "bedrock-input.jsonl"
        staged_in = write_jsonl(source, s.staging_lines, s.line_bytes, model="claude-3-5-sonnet")
        session: Any = get_session()
        async with session.create_client(
            "s3",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        ) as s3:
            for bucket in buckets:
                await s3.create_bucket(Bucket=bucket)
            out_bytes, records = await _s3_write(
                s3, buckets[1], out_key, bedrock_out(s.staging_output_bytes, BEDROCK_RECORD, CLAUDE)
            )
        config = {
            "type": "bedrock",
            "region": REGION,
            "input_s3_uri": f"s3://{buckets[0]}/staging/in/",
            "output_s3_uri": f"s3://{buckets[1]}/results",
            "role_arn": "arn:aws:iam::123456789012:role/BenchBatchRole",
            "models": {"claude-3-5-sonnet": CLAUDE},
            "s3_endpoint_url": url,
        }
        common = {"s3_endpoint_url": url, "region": REGION, "config": config}
        common["blob_dir"] = str(self.work / "bedrock-blobs")
        upload = {"input": str(source), "lines": s.staging_lines, "file_tag": tag}
        upload |= {"model": "claude-3-5-sonnet", "bucket": buckets[0], "prefix": "staging/in"}
        part = 8 * 1024 * 1024  # the adapter's default part_bytes
        base, ours = await self.worker_pairs(
            {**common, **upload, "op": "s3-upload", "key": "plain/input.jsonl", "part_bytes": part},
            {**common, **upload, "op": "bedrock-upload"},
        )
        staged = ours[0]["staged_bytes"]
        self.transfer_row(
            f"{BEDROCK_UP} ({size(staged_in)}, {s.staging_lines:,} lines)",
            ours,
            base,
            base_label="plain aiobotocore multipart upload",
            detail=f", {size(staged)} of Bedrock records staged",
        )
        read = {"bucket": buckets[1], "key": out_key, "job": job, "model": "claude-3-5-sonnet"}
        base, ours = await self.worker_pairs(
            {**common, **read, "op": "s3-read"}, {**common, **read, "op": "bedrock-read"}
        )
        for r in ours:
            r["source_bytes"] = out_bytes
        o = best(ours)
        self.transfer_row(
            f"{BEDROCK_READ} ({size(out_bytes)} .out, {records:,} records)",
            ours,
            base,
            base_label="plain get_object",
            detail=f", {size(o['bytes'])} of OpenAI lines out",
            rate_of="source_bytes",
        )

    # 10. vertex

    async def staging_vertex(self) -> None:
        print("10. vertex staging (gcp-storage-emulator)", flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [python(), "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--in-memory", "--quiet"]
        emulator = self.start_server("gcs-emulator", argv, url + "/")
        self.notes.append(
            f"item 10: gcp-storage-emulator {_version('gcp-storage-emulator')} (in memory) on "
            "loopback, google-auth tokens from tests/fakes/vertex_upstream.py's token endpoint; "
            "the adapter with its default 8 MiB upload chunks; peak RSS counted from after the "
            "first token and Cloud Storage call"
        )
        token_port = free_port()
        key_file = self.work / "vertex-key" / "service-account.json"
        key_file.parent.mkdir(exist_ok=True)
        spec = {"op": "token-server", "port": token_port, "key_file": str(key_file)}
        spec |= {"storage_url": url, "project": PROJECT}
        argv = [python(), "-m", "bench.staging_worker", orjson.dumps(spec).decode()]
        token = self.start_server("token-server", argv, f"http://127.0.0.1:{token_port}/health")
        try:
            await self._vertex(url, f"http://127.0.0.1:{token_port}", key_file)
        finally:
            self.stop_proc(token)
            self.stop_proc(emulator)

    async def _vertex(self, url: str, token_url: str, key_file: Path) -> None:
        s = self.s
        bucket, job, tag = "bench-vertex", "4711000000000000001", "v" * 24
        folder = f"batch/out/batch_{tag}/prediction-model-2026-12-06T10:00:00.000000Z"
        source = self.work / "vertex-input.jsonl"
        staged_in = write_jsonl(source, s.staging_lines, s.line_bytes, model=GEMINI)
        timeout = aiohttp.ClientTimeout(total=900)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(f"{url}/storage/v1/b", json={"name": bucket}) as resp:
                assert resp.status == 200, await resp.text()
            files, out_bytes, lines = await _gcs_write(
                http,
                url,
                bucket,
                folder,
                vertex_predictions(s.staging_output_bytes, VERTEX_LINE, GEMINI),
            )
        config = {
            "type": "vertex",
            "project": PROJECT,
            "location": "us-central1",
            "base_url": token_url,  # the job API is never called here
            "storage_url": url,
            "credentials_file": str(key_file),
            "gcs_input_prefix": f"gs://{bucket}/batch/in",
            "gcs_output_prefix": f"gs://{bucket}/batch/out/",
        }
        common = {"config": config, "bucket": bucket, "storage_url": url}
        common["blob_dir"] = str(self.work / "vertex-blobs")
        upload = {"input": str(source), "lines": s.staging_lines, "file_tag": tag, "model": GEMINI}
        chunk = 8 * 1024 * 1024  # the adapter's default upload_chunk_bytes
        base, ours = await self.worker_pairs(
            {**common, **upload, "op": "gcs-upload", "key": "plain/in.jsonl", "chunk_bytes": chunk},
            {**common, **upload, "op": "vertex-upload"},
        )
        staged = ours[0]["staged_bytes"]
        self.transfer_row(
            f"{VERTEX_UP} ({size(staged_in)}, {s.staging_lines:,} lines)",
            ours,
            base,
            base_label="plain aiohttp resumable upload",
            detail=f", {size(staged)} of Vertex requests staged",
        )
        read = {"job": job, "model": GEMINI, "lines": lines, "files": files}
        read["dir"] = f"gs://{bucket}/{folder}"
        base, ours = await self.worker_pairs(
            {**common, **read, "op": "gcs-read"}, {**common, **read, "op": "vertex-read"}
        )
        for r in ours:
            r["source_bytes"] = out_bytes
        o = best(ours)
        self.transfer_row(
            f"{VERTEX_READ} ({size(out_bytes)} in {len(files)} files, {lines:,} lines)",
            ours,
            base,
            base_label="plain alt=media downloads",
            detail=f", {size(o['bytes'])} of OpenAI lines out",
            rate_of="source_bytes",
        )


async def _s3_write(s3: Any, bucket: str, key: str, blocks: Any) -> tuple[int, int]:
    """A multipart upload of the blocks in 8 MiB parts; (bytes, lines)."""
    part_size = 8 * 1024 * 1024
    created = await s3.create_multipart_upload(Bucket=bucket, Key=key)
    upload_id = created["UploadId"]
    parts: list[dict[str, Any]] = []
    buffer, total, lines = bytearray(), 0, 0

    async def send(data: bytes) -> None:
        number = len(parts) + 1
        sent = await s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        parts.append({"ETag": sent["ETag"], "PartNumber": number})

    for block in blocks:
        buffer += block
        total += len(block)
        lines += block.count(b"\n")
        if len(buffer) >= part_size:
            await send(bytes(buffer))
            buffer.clear()
    if buffer or not parts:
        await send(bytes(buffer))
    await s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    return total, lines


async def _gcs_write(
    http: aiohttp.ClientSession, url: str, bucket: str, folder: str, blocks: Any
) -> tuple[list[str], int, int]:
    """Prediction files of about VERTEX_FILE bytes each (media uploads); (names, bytes, lines)."""
    names: list[str] = []
    buffer, total, lines = bytearray(), 0, 0

    async def send() -> None:
        name = f"{folder}/predictions_{len(names) + 1:05d}.jsonl"
        target = f"{url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}"
        headers = {"Content-Type": "application/octet-stream"}
        async with http.post(target, data=bytes(buffer), headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        names.append(name)
        buffer.clear()

    for block in blocks:
        buffer += block
        total += len(block)
        lines += block.count(b"\n")
        if len(buffer) >= VERTEX_FILE:
            await send()
    if buffer:
        await send()
    return names, total, lines


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"
