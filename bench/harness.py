"""What every benchmark uses: the processes, setup calls, streamed transfers, RSS watching."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.data import ENDPOINT, config_has
from bench.load import LoadResult, check_loopback, run_load
from bench.procs import Proc, free_port, python
from bench.report import Row
from bench.wrk import run_wrk

# Extra top-level keys for the gateway's config (e.g. to switch a retrieve cache off).
GATEWAY_CONFIG_EXTRA: dict[str, Any] = {}
AUTH = {"Authorization": "Bearer bench"}


@dataclass
class Server:
    proc: Proc
    base: str

    def url(self, path: str) -> str:
        return self.base + path


@dataclass(frozen=True)
class Sizes:
    rounds: int
    active_batches: int
    terminal_batches: int
    c1_requests: int
    c64_requests: int
    duration: float
    create_c1: int
    create_c64: int
    upload_lines: int
    line_bytes: int
    download_bytes: int
    list_batches: int
    list_requests: int
    poller_batches: int
    poller_latency_ms: float
    litellm_upload_lines: int
    litellm_requests: int
    staging_lines: int  # items 9-10: the input staged (of `line_bytes` each)
    staging_output_bytes: int  # items 9-10: the provider's output read back
    accounting_bytes: int  # item 11
    shard_lines: int  # item 12: the batch split and merged (of bench/sharding.py's LINE_BYTES)
    shard_max_lines: int  # item 12: the shard's max_lines (the input makes 10 children)


class Harness:
    def __init__(self, sizes: Sizes, work: Path) -> None:
        self.s = sizes
        self.work = work
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.procs: list[Proc] = []
        self.http: aiohttp.ClientSession
        self.sim: Server
        self.gateway_config = work / "gateway.yaml"
        self.db_path = work / "gateway.db"

    # processes

    def start_simulator(self) -> Server:
        port = free_port()
        argv = [python(), "-m", "bench.simulator", "--port", str(port)]
        # Small output files until item 5 asks for big ones: the gateway keeps a copy of
        # every output file it sees end, item 2's included.
        output = str(min(self.s.download_bytes, 1_000_000))
        proc = Proc("simulator", [*argv, "--output-bytes", output], self.work)
        self.procs.append(proc)
        proc.wait_http(f"http://127.0.0.1:{port}/_health")
        return Server(proc, f"http://127.0.0.1:{port}")

    def write_gateway_config(
        self, path: Path, db: Path, blobs: Path, extra: dict[str, Any] | None = None
    ) -> None:
        config = {
            "server": {"host": "127.0.0.1", "port": 8080},
            "store": {"url": f"sqlite:///{db}"},
            "blobs": {"dir": str(blobs)},
            "auth": {"open": True},
            "providers": {
                "sim": {"type": "openai", "base_url": self.sim.url("/v1"), "api_key": "sk-bench"}
            },
            "default": "sim",
            **GATEWAY_CONFIG_EXTRA,
            **(extra or {}),
        }
        if config_has("poller"):
            # Item 7 times sweeps itself; a background sweep would add upstream calls to
            # items 1-3 (and break item 2's "no upstream call").
            config["poller"] = {"enabled": False}
        path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))  # JSON is YAML

    def start_gateway(
        self, name: str, workers: int | None = None, config: Path | None = None
    ) -> Server:
        port = free_port()
        argv = [python(), "-m", "gateway", "serve", "--config", str(config or self.gateway_config)]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        if workers:
            argv += ["--workers", str(workers)]
        proc = Proc(name, argv, self.work)
        self.procs.append(proc)
        proc.wait_http(f"http://127.0.0.1:{port}/health/live")
        return Server(proc, f"http://127.0.0.1:{port}")

    def stop(self, server: Server) -> None:
        server.proc.stop()
        self.procs.remove(server.proc)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # setup calls

    async def json(self, method: str, url: str, body: Any = None) -> Any:
        check_loopback(url)
        data = orjson.dumps(body) if body is not None else None
        headers = {**AUTH, "Content-Type": "application/json"} if data else AUTH
        async with self.http.request(method, url, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {url} -> {resp.status}: {raw[:300]!r}")
            return orjson.loads(raw)

    async def sim_batch_reads(self) -> int:
        stats = await self.json("GET", self.sim.url("/_stats"))
        return int(stats.get("batch_get", 0))

    async def create_batches(self, gw: Server, file_id: str, n: int, **metadata: str) -> list[str]:
        body: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
        }
        if metadata:
            body["metadata"] = metadata
        return [(await self.json("POST", gw.url("/v1/batches"), body))["id"] for _ in range(n)]

    # transfers

    async def upload(self, url: str, path: Path, timeout: float = 300) -> tuple[int, bytes, float]:
        """Stream `path` as a multipart upload with a Content-Length, as the SDKs send it."""
        check_loopback(url)
        boundary = "bench" + secrets.token_hex(12)
        pre = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file";'
            f' filename="bench.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        post = f"\r\n--{boundary}--\r\n".encode()
        size = path.stat().st_size

        async def body() -> AsyncIterator[bytes]:
            yield pre
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk
            yield post

        headers = {
            **AUTH,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(pre) + size + len(post)),
        }
        t0 = time.perf_counter()
        async with self.http.post(
            url, data=body(), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            raw = await resp.read()
        return resp.status, raw, time.perf_counter() - t0

    async def download(self, url: str, timeout: float = 300) -> tuple[int, int, float]:
        """GET `url`, counting and dropping the body; (status, bytes, seconds)."""
        check_loopback(url)
        n = 0
        t0 = time.perf_counter()
        async with self.http.get(
            url,
            headers={**AUTH, "Accept": "application/binary"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            async for chunk in resp.content.iter_any():
                n += len(chunk)
        return resp.status, n, time.perf_counter() - t0

    @contextlib.asynccontextmanager
    async def rss_watch(self, proc: Proc) -> AsyncIterator[dict[str, int]]:
        """Peak RSS growth of `proc` across the block: VmHWM after minus VmRSS before.

        VmHWM cannot be reset, so callers use a fresh process; VmRSS is also
        sampled every 10 ms as a cross-check.
        """
        out = {"rss_before_kb": proc.status_kb("VmRSS"), "hwm_before_kb": proc.status_kb("VmHWM")}
        peak = out["rss_before_kb"]
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.status_kb("VmRSS"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.01)

        task = asyncio.create_task(sample())
        try:
            yield out
        finally:
            done.set()
            await task
            out["hwm_after_kb"] = proc.status_kb("VmHWM")
            out["sampled_peak_rss_kb"] = peak
            out["growth_kb"] = out["hwm_after_kb"] - out["rss_before_kb"]

    # load

    async def load(
        self,
        server: Server,
        urls: str | list[str],
        concurrency: int,
        requests: int,
        warmup: int = 0,
        **kwargs: Any,
    ) -> LoadResult:
        """run_load within the size's time cap, noting the server's CPU time per request."""
        duration = kwargs.pop("duration", self.s.duration)
        return await self._cpu_noted(
            server,
            run_load(
                urls,
                concurrency=concurrency,
                requests=requests,
                duration=duration,
                warmup=warmup,
                **kwargs,
            ),
        )

    async def wrk(self, server: Server, urls: list[str], concurrency: int) -> LoadResult:
        """wrk GETs for half the size's time cap, noting the server's CPU time per request."""
        run = asyncio.to_thread(
            run_wrk, urls, concurrency=concurrency, duration=self.s.duration / 2
        )
        return await self._cpu_noted(server, run)

    @staticmethod
    async def _cpu_noted(server: Server, run: Awaitable[LoadResult]) -> LoadResult:
        cpu0 = server.proc.cpu_seconds()
        result = await run
        if result.requests:
            cpu = server.proc.cpu_seconds() - cpu0
            result.extra["server_cpu_us_per_request"] = round(cpu / result.requests * 1e6)
        return result

    async def counted(self, run: Awaitable[LoadResult], warmup: int) -> LoadResult:
        """Run a gateway load and note how many batch reads reached the simulator."""
        before = await self.sim_batch_reads()
        result = await run
        calls = await self.sim_batch_reads() - before
        result.extra["upstream_calls"] = calls
        result.extra["upstream_calls_per_request"] = round(calls / (result.requests + warmup), 3)
        return result

    async def pair(
        self,
        direct: Callable[[], Awaitable[LoadResult]],
        gateway: Callable[[], Awaitable[LoadResult]],
        better: Callable[[LoadResult], float],
    ) -> tuple[LoadResult, LoadResult]:
        """Alternate direct and gateway runs; keep the best round of each (lowest `better`)."""
        ds, gs = [], []
        for _ in range(self.s.rounds):
            ds.append(await direct())
            gs.append(await gateway())
        return min(ds, key=better), min(gs, key=better)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(row.line())

    def find(self, prefix: str) -> Row | None:
        return next((r for r in self.rows if r.name.startswith(prefix) and r.data), None)


def both(d: LoadResult | None, g: LoadResult) -> dict[str, Any]:
    out: dict[str, Any] = {"gateway": g.summary()}
    if d is not None:
        out["direct"] = d.summary()
    return out
