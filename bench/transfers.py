"""Items 4 and 5: a 200 MB upload and a 200 MB download, each through a fresh gateway per round."""

from __future__ import annotations

from typing import Any

import orjson

from bench.data import write_jsonl
from bench.harness import Harness
from bench.report import Row, mb

MB = 1_000_000
KB_30MB = 30 * 1024
UPLOAD = "4. upload"
DOWNLOAD = "5. download (upstream output file)"
LOCAL = "5. download (local input file)"


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

    async def download_files(self, output_file: str, input_file: str) -> None:
        s = self.s
        print("5. download", flush=True)
        size = s.download_bytes
        direct = []
        for _ in range(s.rounds):
            status, n, seconds = await self.download(self.sim.url("/v1/files/file-out-1/content"))
            assert status == 200 and n == size, (status, n)
            direct.append(seconds)
        rounds: list[dict[str, Any]] = []
        local: list[dict[str, Any]] = []
        for i in range(s.rounds):
            gw = self.start_gateway(f"gateway-download-{i}")
            try:
                async with self.rss_watch(gw.proc) as mem:
                    cpu0 = gw.proc.cpu_seconds()
                    url = gw.url(f"/v1/files/{output_file}/content")
                    status, n, seconds = await self.download(url)
                    cpu = gw.proc.cpu_seconds() - cpu0
                if status != 200 or n != size:
                    raise RuntimeError(f"gateway download failed: {status}, {n} of {size} bytes")
                rounds.append({"seconds": seconds, "gateway_cpu_seconds": cpu, **mem})
                async with self.rss_watch(gw.proc) as mem:
                    url = gw.url(f"/v1/files/{input_file}/content")
                    status, n, seconds = await self.download(url)
                assert status == 200, status
                local.append({"bytes": n, "seconds": seconds, **mem})
            finally:
                self.stop(gw)
        best = min(rounds, key=lambda r: r["seconds"])
        rate, direct_rate = size / MB / best["seconds"], size / MB / min(direct)
        growth = max(r["growth_kb"] for r in rounds)
        self.add(
            Row(
                f"{DOWNLOAD} ({size / MB:.0f} MB)",
                f"{rate:,.0f} MB/s, peak RSS +{mb(growth)}",
                f"direct {direct_rate:,.0f} MB/s",
                f"{rate / direct_rate:.2f}× direct",
                "≥ 0.70× direct, < 30 MB RSS",
                rate >= 0.7 * direct_rate and growth < KB_30MB,
                {
                    "bytes": size,
                    "mb_per_s": rate,
                    "direct_mb_per_s": direct_rate,
                    "growth_kb": growth,
                    "rounds": rounds,
                },
            )
        )
        best = min(local, key=lambda r: r["seconds"])
        growth = max(r["growth_kb"] for r in local)
        rate = best["bytes"] / MB / best["seconds"]
        self.add(
            Row(
                f"{LOCAL} ({best['bytes'] / MB:.0f} MB, sendfile)",
                f"{rate:,.0f} MB/s, peak RSS +{mb(growth)}",
                target="< 30 MB RSS",
                met=growth < KB_30MB,
                data={"mb_per_s": rate, "growth_kb": growth, "rounds": local},
            )
        )
