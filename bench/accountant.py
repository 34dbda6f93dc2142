"""Item 11: the accountant's memory and time on a 200 MB output, and retrieves meanwhile.

`gateway.accounting.tally_lines` over a 200 MB OpenAI output file in a fresh process,
against a plain read of the file; the whole `Accountant` in a gateway whose batch's output
file is a kept 212 MB blob (peak RSS of the gateway process, a fresh one per round); and
the retrieve latency of that batch while it is accounted, against the same load idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.data import config_has, write_jsonl
from bench.harness import AUTH, Server
from bench.load import LoadResult
from bench.outputs import write_openai_output
from bench.report import Row, lat, mb
from bench.staging import ACCOUNT, KB_30MB, MB, RETRIEVE, TALLY, Staging, best, rate, size

SWEEP_SECONDS = 0.25
PACE = 0.01  # the retrieves: one every 10 ms, whatever the answers take


class Accounting(Staging):
    async def accounting(self) -> None:
        s = self.s
        print("11. accounting", flush=True)
        path = self.work / "accounting-output.jsonl"
        written, lines = write_openai_output(path, s.accounting_bytes)
        spec = {"input": str(path)}
        base, ours = await self.worker_pairs({**spec, "op": "read"}, {**spec, "op": "tally"})
        assert ours[0]["lines"] == lines, (ours[0], lines)
        self.transfer_row(
            f"{TALLY} ({size(written)}, {lines:,} lines)",
            ours,
            base,
            base_label="plain read",
            target_kb=KB_30MB,
        )
        if not config_has("usage"):
            self.add(Row(ACCOUNT, "not in this tree"))
            self.add(Row(RETRIEVE, "not in this tree"))
            return
        await self.gateway_accounting()

    async def gateway_accounting(self) -> None:
        """A batch whose kept output file is `accounting_bytes`, accounted again by a fresh
        gateway per round while it is retrieved every PACE seconds."""
        s = self.s
        db, files = self.work / "accounting.db", self.work / "accounting-files"
        keep = {"dir": str(files), "keep_provider_outputs": True}
        setup, measure = self.work / "accounting-setup.yaml", self.work / "accounting.yaml"
        self.write_gateway_config(setup, db, files, {"blobs": keep, "usage": {"enabled": False}})
        usage = {"enabled": True, "sweep_seconds": SWEEP_SECONDS}
        self.write_gateway_config(measure, db, files, {"blobs": keep, "usage": usage})
        await self.json("POST", self.sim.url("/_config"), {"output_bytes": s.accounting_bytes})
        gw = self.start_gateway("gateway-accounting-setup", config=setup)
        try:
            small = self.work / "accounting-small.jsonl"
            write_jsonl(small, 10, 400)
            status, raw, _ = await self.upload(gw.url("/v1/files"), small)
            assert status == 200, raw[:300]
            (batch_id,) = await self.create_batches(gw, orjson.loads(raw)["id"], 1, sim="completed")
            obj = await self.json("GET", gw.url(f"/v1/batches/{batch_id}"))
            assert obj["status"] == "completed", obj
            blob = await _until(db, "SELECT blob FROM files WHERE id = ?", obj["output_file_id"])
        finally:
            self.stop(gw)
            await self.json("POST", self.sim.url("/_config"), {"output_bytes": 1_000_000})
        kept = files / str(blob)
        kept_bytes = kept.stat().st_size
        self.notes.append(
            "item 11: the gateway row is a fresh gateway per round accounting the batch again "
            "(its usage rows deleted, accounted_at set NULL in SQLite), timed from then until "
            "accounted_at is set; its peak RSS counts from there (VmHWM reset via clear_refs)"
        )
        rounds, idle, during = [], [], []
        for i in range(s.rounds):
            gw = self.start_gateway(f"gateway-accounting-{i}", config=measure)
            try:
                await _until(db, "SELECT accounted_at FROM batches WHERE id = ?", batch_id)
                url = gw.url(f"/v1/batches/{batch_id}")
                await self.paced(url, seconds=1.0)  # warm the pool and the process
                measured, busy = await self.account_once(gw, db, batch_id, url)
                rounds.append(measured)
                during.append(busy)
                idle.append(await self.paced(url, seconds=max(1.0, measured["seconds"])))
            finally:
                self.stop(gw)
        plain = [await self.worker({"op": "read", "input": str(kept)}) for _ in range(s.rounds)]
        o, b = best(rounds), best(plain)
        r, br = kept_bytes / MB / o["seconds"], rate(b)
        self.add(
            Row(
                f"{ACCOUNT} ({size(kept_bytes)} kept output)",
                f"{o['seconds']:.1f} s due → recorded (sweep every {SWEEP_SECONDS} s), "
                f"{r:,.0f} MB/s, peak RSS +{mb(o['growth_kb'])} (gateway process)",
                f"plain read {br:,.0f} MB/s ({b['seconds']:.1f} s)",
                f"{r / br:.2f}× plain",
                "< 30 MB RSS",
                o["growth_kb"] < KB_30MB,
                {"ours": o, "baseline": b, "rounds": rounds, "baseline_rounds": plain},
            )
        )
        busy = min(during, key=lambda x: x.p99)  # the best round, as everywhere
        quiet = min(idle, key=lambda x: x.p99)
        added = busy.p99 - quiet.p99
        slow = sum(1 for x in busy.latencies_ms if x > 100)
        self.add(
            Row(
                f"{RETRIEVE} (that batch, one GET every {PACE * 1000:.0f} ms, "
                f"{size(kept_bytes)} accounted)",
                f"{lat(busy)}, max {busy.pct(100):,.0f} ms, {slow} of {busy.requests:,} "
                "requests over 100 ms",
                f"idle {lat(quiet)}, max {quiet.pct(100):,.1f} ms",
                f"+{added:,.1f} ms p99",
                "p99 ≤ idle + 10 ms",
                added <= 10.0,
                {"during": [d.summary() for d in during], "idle": [d.summary() for d in idle]},
            )
        )

    async def account_once(
        self, gw: Server, db: Path, batch_id: str, url: str
    ) -> tuple[dict[str, Any], LoadResult]:
        """Make the batch due again and time its accounting, retrieving it meanwhile."""
        pid = gw.proc.pid
        try:  # VmHWM from here (else the startup's peak may hide the accounting's)
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        done = asyncio.Event()
        async with self.rss_watch(gw.proc) as mem:
            cpu0 = gw.proc.cpu_seconds()
            await asyncio.to_thread(_reset_accounting, db, batch_id)
            t0 = time.perf_counter()
            load = asyncio.create_task(self.paced(url, until=done))
            await _until(db, "SELECT accounted_at FROM batches WHERE id = ?", batch_id)
            seconds = time.perf_counter() - t0
            done.set()
            busy = await load
            cpu = gw.proc.cpu_seconds() - cpu0
        return {"seconds": seconds, "gateway_cpu_seconds": cpu, "hwm_reset": reset, **mem}, busy

    async def paced(
        self, url: str, *, seconds: float | None = None, until: asyncio.Event | None = None
    ) -> LoadResult:
        """One GET every PACE seconds (open loop) for `seconds` or until `until`; each
        latency counts from when its request was due, so a stalled server shows in every
        request that waited for it, not only in the one it was answering."""
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        clock = time.perf_counter

        async def one(due: float) -> None:
            try:
                async with self.http.get(url, headers=AUTH) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses[0] += 1
            latencies.append((clock() - due) * 1000)

        tasks: list[asyncio.Task[None]] = []
        start = clock()
        while not (
            (seconds is not None and clock() - start >= seconds)
            or (until is not None and until.is_set())
        ):
            due = start + len(tasks) * PACE
            await asyncio.sleep(max(0.0, due - clock()))
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        latencies.sort()
        errors = sum(n for status, n in statuses.items() if status != 200)
        return LoadResult(len(latencies), errors, clock() - start, latencies, statuses)


def _reset_accounting(db: Path, batch_id: str) -> None:
    """The batch is due again: its usage rows go, accounted_at is NULL."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute("DELETE FROM usage_rows WHERE batch_id = ?", (batch_id,))
        con.execute("UPDATE batches SET accounted_at = NULL WHERE id = ?", (batch_id,))


async def _until(db: Path, query: str, *args: Any, timeout: float = 300) -> Any:
    """Poll `query` until its first column is not NULL; that value."""

    def read() -> Any:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
            row = con.execute(query, args).fetchone()
        return row[0] if row else None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(read)
        if value is not None:
            return value
        await asyncio.sleep(0.02)
    raise RuntimeError(f"timed out waiting for: {query}")
