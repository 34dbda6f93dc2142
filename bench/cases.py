"""The benchmarks of the issue, items 1-7; each adds its rows as soon as it has measured."""

from __future__ import annotations

import os
import subprocess
import time

import orjson

from bench import wrk
from bench.data import ENDPOINT, migrate, seed_batches
from bench.harness import Server, both
from bench.load import LoadResult
from bench.procs import REPO, Proc, free_port, python
from bench.report import Row, cpu, lat, ms, rps
from bench.staging import STAGING_ROWS
from bench.transfers import KEPT, LOCAL, RELAYED, UPLOAD, Transfers

ROWS = (
    "1. active retrieve c=1",
    "1. bare aiohttp proxy, active retrieve c=1",
    "1. active retrieve c=64",
    "1. active retrieve c=64, one id (single-flight)",
    "1. active retrieve c=64, --workers 2",
    "2. terminal retrieve c=64",
    "3. create c=1",
    "3. create c=64",
    UPLOAD,
    KEPT,
    RELAYED,
    LOCAL,
    "6. list page 1",
    "6. list deep page",
    "7. poller sweep",
    "8. LiteLLM active retrieve c=1",
    "8. LiteLLM active retrieve c=64",
    "8. LiteLLM create c=1",
    "8. LiteLLM upload",
    *STAGING_ROWS,
)


class Cases(Transfers):
    # 1. active retrieve

    async def active(self, gw: Server, file_id: str) -> None:
        s = self.s
        print("1. active retrieve", flush=True)
        ids = await self.create_batches(gw, file_id, s.active_batches)
        # As many distinct ids as the gateway has; the simulator answers any id alike.
        gw_urls = [gw.url(f"/v1/batches/{i}") for i in ids]
        sim_urls = [self.sim.url(f"/v1/batches/batch_sim{n + 1}") for n in range(len(ids))]

        for conc, n in ((1, s.c1_requests), (64, s.c64_requests)):
            w = min(200, n)
            d, g = await self.pair(
                lambda c=conc, n=n, w=w: self.load(self.sim, sim_urls, c, n, w),
                lambda c=conc, n=n, w=w: self.counted(self.load(gw, gw_urls, c, n, w), w),
                (lambda r: r.p50) if conc == 1 else (lambda r: -r.rps),
            )
            calls = f"{g.extra['upstream_calls_per_request']:.2f} upstream calls/request"
            if conc == 1:
                added = g.p50 - d.p50
                self.add(
                    Row(
                        ROWS[0],
                        f"{lat(g)}, {rps(g.rps)}, {calls}, {cpu(g)}",
                        f"direct {lat(d)}, {rps(d.rps)}",
                        f"+{ms(added)} p50",
                        "≤ +0.50 ms p50",
                        added <= 0.5,
                        {**both(d, g), "added_p50_ms": added},
                    )
                )
            else:
                self.add(
                    Row(
                        ROWS[2],
                        f"{rps(g.rps)}, {lat(g)}, {calls}, {cpu(g)}",
                        f"direct {rps(d.rps)}, {lat(d)}",
                        f"{g.rps / d.rps:.2f}× direct",
                        "≥ 2,000 req/s",
                        g.rps >= 2000,
                        both(d, g),
                    )
                )

        await self.bare_proxy(sim_urls)

        # All 64 clients on one batch: concurrent refreshes share one upstream call.
        w = 200
        g = await self.counted(self.load(gw, gw_urls[0], 64, s.c64_requests, w), w)
        self.add(
            Row(
                ROWS[3],
                f"{rps(g.rps)}, {lat(g)}",
                "—",
                f"{g.extra['upstream_calls_per_request']:.2f} upstream calls/request",
                "reported separately",
                None,
                both(None, g),
            )
        )

    async def bare_proxy(self, sim_urls: list[str]) -> None:
        """The same c=1 retrieve through bench/refproxy.py: what any aiohttp hop costs here."""
        s = self.s
        port = free_port()
        argv = [python(), "-m", "bench.refproxy", "--port", str(port), "--upstream", self.sim.base]
        proc = Proc("refproxy", argv, self.work)
        self.procs.append(proc)
        ref = Server(proc, f"http://127.0.0.1:{port}")
        try:
            proc.wait_http(ref.url("/health"))
            ref_urls = [ref.url(u.removeprefix(self.sim.base)) for u in sim_urls]
            n, w = s.c1_requests, min(200, s.c1_requests)
            d, r = await self.pair(
                lambda: self.load(self.sim, sim_urls, 1, n, w),
                lambda: self.load(ref, ref_urls, 1, n, w),
                lambda x: x.p50,
            )
        finally:
            self.stop(ref)
        added = r.p50 - d.p50
        ours = self.find(ROWS[0])
        gw_added = ours.data["added_p50_ms"] if ours else float("nan")
        self.add(
            Row(
                ROWS[1],
                f"{lat(r)}, +{ms(added)} over direct (no store, no middleware, no parsing)",
                f"direct {lat(d)}",
                f"the gateway adds {ms(gw_added - added)} more",
                "reference",
                None,
                {**both(d, r), "added_p50_ms": added, "gateway_minus_bare_ms": gw_added - added},
            )
        )

    # 2. terminal retrieve

    async def terminal(self, gw: Server, file_id: str) -> None:
        s = self.s
        print("2. terminal retrieve", flush=True)
        ids = await self.create_batches(gw, file_id, s.terminal_batches, sim="completed")
        for batch_id in ids:  # the first retrieve sees `completed` and stores it
            obj = await self.json("GET", gw.url(f"/v1/batches/{batch_id}"))
            assert obj["status"] == "completed", obj
        gw_urls = [gw.url(f"/v1/batches/{i}") for i in ids]
        sim_urls = [self.sim.url(f"/v1/batches/batch_done{n + 1}") for n in range(len(ids))]
        n, w = s.c64_requests, 200
        d, g = await self.pair(
            lambda: self.load(self.sim, sim_urls, 64, n, w),
            lambda: self.counted(self.load(gw, gw_urls, 64, n, w), w),
            lambda r: -r.rps,
        )
        calls = g.extra["upstream_calls"]
        self.add(
            Row(
                ROWS[5],
                f"{rps(g.rps)}, {lat(g)}, {calls} upstream calls, {cpu(g)}",
                f"direct {rps(d.rps)}, {lat(d)}",
                f"{g.rps / d.rps:.2f}× direct",
                "≥ 5,000 req/s, no upstream call",
                g.rps >= 5000 and calls == 0,
                both(d, g),
            )
        )

    # 3. create

    async def create(self, gw: Server, file_id: str) -> None:
        s = self.s
        print("3. create", flush=True)
        body = {"endpoint": ENDPOINT, "completion_window": "24h"}
        gw_body = orjson.dumps({"input_file_id": file_id, **body})
        sim_body = orjson.dumps({"input_file_id": "file-sim1", **body})
        gw_url, sim_url = gw.url("/v1/batches"), self.sim.url("/v1/batches")
        for conc, n in ((1, s.create_c1), (64, s.create_c64)):
            w = min(50, n)
            d, g = await self.pair(
                lambda c=conc, n=n, w=w: self.load(
                    self.sim, sim_url, c, n, w, method="POST", body=sim_body
                ),
                lambda c=conc, n=n, w=w: self.load(
                    gw, gw_url, c, n, w, method="POST", body=gw_body
                ),
                (lambda r: r.p50) if conc == 1 else (lambda r: -r.rps),
            )
            if conc == 1:
                added = g.p50 - d.p50
                self.add(
                    Row(
                        ROWS[6],
                        f"{lat(g)}, {rps(g.rps)}, {cpu(g)}",
                        f"direct {lat(d)}",
                        f"+{ms(added)} p50",
                        "≤ +1.50 ms p50",
                        added <= 1.5,
                        {**both(d, g), "added_p50_ms": added},
                    )
                )
            else:
                self.add(
                    Row(
                        ROWS[7],
                        f"{rps(g.rps)}, {lat(g)}, {cpu(g)}",
                        f"direct {rps(d.rps)}, {lat(d)}",
                        f"{g.rps / d.rps:.2f}× direct",
                        "—",
                        None,
                        both(d, g),
                    )
                )

    # 6. list

    async def list_pages(self, gw: Server, file_id: str) -> None:
        s = self.s
        n = s.list_batches
        print(f"6. list ({n:,} batches)", flush=True)
        t0 = time.perf_counter()
        ids = seed_batches(self.db_path, n, file_id, status="completed", provider="sim")
        self.notes.append(f"item 6: {n:,} batches seeded in {time.perf_counter() - t0:.1f} s")
        depth = int(n * 0.9)
        after = ids[n - 1 - depth]  # the list is newest first
        page = await self.json("GET", gw.url(f"/v1/batches?limit=20&after={after}"))
        assert len(page["data"]) == 20 and page["has_more"], page
        for name, url, where in (
            (ROWS[12], gw.url("/v1/batches?limit=20"), "limit=20"),
            (ROWS[13], gw.url(f"/v1/batches?limit=20&after={after}"), f"after the {depth:,}th"),
        ):
            results = [
                await self.load(gw, url, 1, s.list_requests, warmup=20) for _ in range(s.rounds)
            ]
            g = min(results, key=lambda r: r.p50)
            self.add(
                Row(
                    f"{name} ({where}, {n:,} batches)",
                    f"{lat(g)}, {rps(g.rps)}, {cpu(g)}",
                    target="≤ 5 ms p50",
                    met=g.p50 <= 5.0,
                    data=both(None, g),
                )
            )

    # --workers

    async def workers(self, file_id: str) -> None:
        if not wrk.available():
            self.add(Row(ROWS[4], "not measured: wrk is not installed (`apt-get install wrk`)"))
            return
        print("1. active retrieve, --workers 2 (wrk as the client)", flush=True)
        one, two = [await self.wrk_best(file_id, workers) for workers in (None, 2)]
        self.add(
            Row(
                ROWS[4],
                f"{rps(two.rps)}, {lat(two)}, {cpu(two)} (wrk client)",
                f"one process {rps(one.rps)}, {lat(one)}, {cpu(one)} (wrk client)",
                f"{two.rps / one.rps:.2f}× one process",
                "grows with cores",
                two.rps > one.rps,
                {"gateway": two.summary(), "one_process": one.summary()},
            )
        )

    async def wrk_best(self, file_id: str, workers: int | None) -> LoadResult:
        """Best of the rounds of wrk at c=64 against a fresh gateway of `workers` processes.

        wrk costs a few µs a request where the aiohttp client costs a core of its own,
        which on two cores leaves a second worker nothing to run on.
        """
        gw = self.start_gateway(f"gateway-workers-{workers or 1}", workers=workers)
        try:
            ids = await self.create_batches(gw, file_id, self.s.active_batches)
            urls = [gw.url(f"/v1/batches/{i}") for i in ids]
            await self.load(gw, urls, 64, 200)  # warm every worker's pool and caches
            results = [await self.wrk(gw, urls, 64) for _ in range(self.s.rounds)]
        finally:
            self.stop(gw)
        return max(results, key=lambda r: r.rps)

    # 7. poller

    async def poller(self, file_id: str, timeout: float) -> None:
        s = self.s
        n = s.poller_batches
        print(f"7. poller ({n:,} active batches, {s.poller_latency_ms:.0f} ms upstream)")
        name = f"{ROWS[14]} ({n:,} active, {s.poller_latency_ms:.0f} ms upstream)"
        db, config = self.work / "poller.db", self.work / "poller.yaml"
        self.write_gateway_config(config, db, self.work / "poller-files")  # poller loop off
        await migrate(db)
        seed_batches(db, n, file_id, status="in_progress", provider="sim")
        await self.json("POST", self.sim.url("/_config"), {"latency_ms": s.poller_latency_ms})
        await self.json("POST", self.sim.url("/_reset"))
        try:
            probe = subprocess.run(
                [python(), "-m", "bench.poller_probe", "--config", str(config)]
                + ["--timeout", str(timeout)],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                capture_output=True,
                text=True,
                timeout=timeout + 60,
            )
        finally:
            await self.json("POST", self.sim.url("/_config"), {"latency_ms": 0})
        stats = await self.json("GET", self.sim.url("/_stats"))
        try:
            result = orjson.loads(probe.stdout.strip().splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            result = {"available": False, "reason": f"the probe failed: {probe.stderr[-300:]}"}
        if not result.get("available"):
            self.add(Row(name, f"poller: not available ({result.get('reason')})", data=result))
            return
        seconds, interval = result.get("seconds"), result.get("interval", 30.0)
        calls, peak = stats.get("batch_get", 0), stats.get("max_in_flight", 0)
        self.add(
            Row(
                name,
                f"{seconds:.2f} s, {calls:,} upstream calls, ≤ {peak} in flight"
                if seconds is not None
                else f"did not finish: {result.get('reason')}",
                f"interval {interval:.0f} s",
                f"{seconds / interval:.2f} of the interval" if seconds else "—",
                "one sweep ≤ interval, bounded concurrency",
                seconds is not None and seconds <= interval and calls >= n,
                {**result, "upstream_calls": calls, "max_in_flight": peak},
            )
        )
