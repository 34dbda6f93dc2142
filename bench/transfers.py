"""Items 4 and 5: a 200 MB upload and a 200 MB download, each through a fresh gateway per round."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any

import orjson

from bench.data import write_jsonl
from bench.harness import Harness
from bench.report import Row, mb
from gateway.config import BlobsConfig

MB = 1_000_000
KB_30MB = 30 * 1024
UPLOAD = "4. upload"
# The output file a remote provider made: kept by the gateway when the batch ended
# (sent from its disk), or relayed from the provider (before the copy, or keeping off).
KEPT = "5. download (provider output file, kept)"
RELAYED = "5. download (provider output file, relayed)"
LOCAL = "5. download (uploaded input file)"


class Transfers(Harness):
    # 4. upload

    async def upload_file(self) -> str:
        """Returns the gateway id of the uploaded file (for item 5)."""
        s = self.s
        print("4. upload", flush=True)
        path = self.work / "upload.jsonl"
        size = write_jsonl(path, s.upload_lines, s.line_bytes)
        # Direct: the simulator reads and drops the multipart body (no validation, no disk).
        direct = []
        for _ in range(s.rounds):
            status, raw, seconds = await self.upload(self.sim.url("/v1/files"), path)
            assert status == 200, raw[:300]
            direct.append(seconds)
        # A fresh gateway per round: VmHWM only ever grows.
        rounds: list[dict[str, Any]] = []
        file_id = ""
        for i in range(s.rounds):
            gw = self.start_gateway(f"gateway-upload-{i}")
            try:
                async with self.rss_watch(gw.proc) as mem:
                    cpu0 = gw.proc.cpu_seconds()
                    status, raw, seconds = await self.upload(gw.url("/v1/files"), path)
                    cpu = gw.proc.cpu_seconds() - cpu0
            finally:
                self.stop(gw)
            if status != 200:
                raise RuntimeError(f"gateway upload failed: {status} {raw[:300]!r}")
            record = orjson.loads(raw)
            assert record["bytes"] == size, record
            file_id = record["id"]
            rounds.append({"seconds": seconds, "gateway_cpu_seconds": cpu, **mem})
        best = min(rounds, key=lambda r: r["seconds"])
        rate, direct_rate = size / MB / best["seconds"], size / MB / min(direct)
        growth = max(r["growth_kb"] for r in rounds)
        self.add(
            Row(
                f"{UPLOAD} ({size / MB:.0f} MB, {s.upload_lines:,} lines)",
                f"{rate:,.0f} MB/s, peak RSS +{mb(growth)}",
                f"direct {direct_rate:,.0f} MB/s (simulator: no validation, not stored)",
                f"{rate / direct_rate:.2f}× direct",
                "≥ 200 MB/s, < 30 MB RSS",
                rate >= 200 and growth < KB_30MB,
                {
                    "bytes": size,
                    "mb_per_s": rate,
                    "direct_mb_per_s": direct_rate,
                    "growth_kb": growth,
                    "rounds": rounds,
                },
            )
        )
        return file_id

    # 5. download

    async def output_file(self, file_id: str, *, keep: bool) -> str:
        """A completed batch's output file of `download_bytes`, as a gateway id.

        With `keep`, waits until the gateway has its copy (what happens to every
        remote provider's output file once the batch ends); else it stays relayed.
        """
        config = self.work / f"gateway-keep-{keep}.yaml".lower()
        self.write_gateway_config(
            config, self.db_path, self.work / "files", {"blobs": self.blobs_config(keep)}
        )
        gw = self.start_gateway(f"gateway-output-keep-{keep}".lower(), config=config)
        try:
            (batch_id,) = await self.create_batches(gw, file_id, 1, sim="completed")
            obj = await self.json("GET", gw.url(f"/v1/batches/{batch_id}"))
            assert obj["status"] == "completed", obj
            if keep:
                await self.wait_kept(obj["output_file_id"])
        finally:
            self.stop(gw)
        return str(obj["output_file_id"])

    def blobs_config(self, keep: bool) -> dict[str, Any]:
        blobs: dict[str, Any] = {"dir": str(self.work / "files")}
        if self.can_keep:  # older trees have no copies: always relayed
            blobs["keep_provider_outputs"] = keep
        return blobs

    async def wait_kept(self, file_id: str, timeout: float = 120) -> None:
        """Until the store shows the gateway's copy of `file_id`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.closing(sqlite3.connect(self.db_path)) as db:
                row = db.execute("SELECT blob FROM files WHERE id = ?", (file_id,)).fetchone()
            if row and row[0]:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the gateway did not keep the output file in time")

    async def download_files(self, file_id: str, input_file: str) -> None:
        s = self.s
        print("5. download", flush=True)
        size = s.download_bytes
        await self.json("POST", self.sim.url("/_config"), {"output_bytes": size})
        # The kept one first: a keeping gateway would copy any output file it finds.
        kept = await self.output_file(file_id, keep=True) if self.can_keep else None
        relayed = await self.output_file(file_id, keep=False)
        direct = []
        for _ in range(s.rounds):
            status, n, seconds = await self.download(self.sim.url("/v1/files/file-out-1/content"))
            assert status == 200 and n == size, (status, n)
            direct.append(seconds)
        direct_rate = size / MB / min(direct)
        # Every measurement on a fresh gateway: VmHWM only ever grows. Keeping is off in
        # these, so no copy runs in the background.
        measured: dict[str, list[dict[str, Any]]] = {RELAYED: [], KEPT: [], LOCAL: []}
        files = {RELAYED: relayed, KEPT: kept, LOCAL: input_file}
        config = self.work / "gateway-keep-false.yaml"
        for i in range(s.rounds):
            for name, gateway_file in files.items():
                if gateway_file is None:
                    continue
                gw = self.start_gateway(f"gateway-download-{i}", config=config)
                try:
                    async with self.rss_watch(gw.proc) as mem:
                        cpu0 = gw.proc.cpu_seconds()
                        url = gw.url(f"/v1/files/{gateway_file}/content")
                        status, n, seconds = await self.download(url)
                        cpu = gw.proc.cpu_seconds() - cpu0
                finally:
                    self.stop(gw)
                # Provider files reach clients rewritten into OpenAI's line shape, with
                # gateway ids: about the provider's size, never exactly.
                if status != 200 or (name != LOCAL and not 0.9 * size <= n <= 1.2 * size):
                    raise RuntimeError(f"gateway download failed: {status}, {n} of ~{size} bytes")
                measured[name].append(
                    {"bytes": n, "seconds": seconds, "gateway_cpu_seconds": cpu, **mem}
                )
        for name, rounds in measured.items():
            if not rounds:
                self.add(Row(name, "not in this tree"))
                continue
            best = min(rounds, key=lambda r: r["seconds"])
            rate = best["bytes"] / MB / best["seconds"]
            growth = max(r["growth_kb"] for r in rounds)
            ratio = rate / direct_rate
            target, met = {
                KEPT: ("≥ 0.70× direct, < 30 MB RSS", ratio >= 0.7 and growth < KB_30MB),
                RELAYED: ("< 30 MB RSS (a relay on the same 2 cores)", growth < KB_30MB),
                LOCAL: ("< 30 MB RSS", growth < KB_30MB),
            }[name]
            self.add(
                Row(
                    f"{name} ({best['bytes'] / MB:.0f} MB)",
                    f"{rate:,.0f} MB/s, peak RSS +{mb(growth)}",
                    f"direct {direct_rate:,.0f} MB/s",
                    f"{ratio:.2f}× direct",
                    target,
                    met,
                    {
                        "bytes": best["bytes"],
                        "mb_per_s": rate,
                        "direct_mb_per_s": direct_rate,
                        "growth_kb": growth,
                        "rounds": rounds,
                    },
                )
            )

    @property
    def can_keep(self) -> bool:
        return "keep_provider_outputs" in BlobsConfig.model_fields
