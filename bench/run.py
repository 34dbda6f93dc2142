"""The benchmark suite: simulator + gateway (+ LiteLLM) as processes, one table out.

    python -m bench            # full run; writes bench/results/latest.{json,md}
    python -m bench --quick    # seconds, tiny sizes, no LiteLLM (the test suite's smoke run)

Everything listens on free loopback ports, under a temporary folder removed
afterwards; every load is bounded in request count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson

from bench import litellm
from bench.accountant import Accounting
from bench.cases import ROWS, Cases
from bench.data import write_jsonl
from bench.harness import Sizes
from bench.load import session
from bench.procs import REPO, machine_busy, wait_quiet
from bench.report import Row, machine, render_markdown, update_readmes, write_results
from bench.sharding import Sharding
from bench.staging import (
    ACCOUNT,
    BEDROCK_READ,
    BEDROCK_UP,
    RETRIEVE,
    SHARD_MERGE,
    SHARD_SPLIT,
    TALLY,
    VERTEX_READ,
    VERTEX_UP,
)

RESULTS = REPO / "bench" / "results"
GROUPS = ("active", "terminal", "create", "upload", "download", "list", "workers", "poller")
GROUPS += ("litellm", "bedrock", "vertex", "accounting", "sharding")

FULL = Sizes(
    rounds=3,
    active_batches=256,
    terminal_batches=16,
    c1_requests=3000,
    c64_requests=30_000,
    duration=10.0,
    create_c1=1000,
    create_c64=5000,
    upload_lines=50_000,
    line_bytes=4000,
    download_bytes=200_000_000,
    list_batches=100_000,
    list_requests=500,
    poller_batches=10_000,
    poller_latency_ms=20.0,
    litellm_upload_lines=12_500,
    litellm_requests=2000,
    staging_lines=50_000,
    staging_output_bytes=1_000_000_000,
    accounting_bytes=200_000_000,
    shard_lines=500_000,
    shard_max_lines=50_000,
)
QUICK = Sizes(
    rounds=1,
    active_batches=8,
    terminal_batches=2,
    c1_requests=100,
    c64_requests=400,
    duration=3.0,
    create_c1=30,
    create_c64=100,
    upload_lines=500,
    line_bytes=4000,
    download_bytes=2_000_000,
    list_batches=2000,
    list_requests=30,
    poller_batches=100,
    poller_latency_ms=20.0,
    litellm_upload_lines=100,
    litellm_requests=50,
    staging_lines=500,
    staging_output_bytes=2_000_000,
    accounting_bytes=2_000_000,
    shard_lines=2000,
    shard_max_lines=200,
)


class Suite(Cases, Accounting, Sharding):
    def __init__(self, sizes: Sizes, work: Path, *, quick: bool, only: set[str]) -> None:
        super().__init__(sizes, work)
        self.quick = quick
        self.only = only

    def skip(self, group: str, *rows: str) -> bool:
        if group in self.only:
            return False
        for name in rows:
            self.add(Row(name, "skipped (--only)"))
        return True

    async def run(self, litellm_skip: str | None) -> None:
        self.sim = self.start_simulator()
        self.write_gateway_config(self.gateway_config, self.db_path, self.work / "files")
        gw = self.start_gateway("gateway")
        async with session(8) as self.http:
            small = self.work / "small.jsonl"
            write_jsonl(small, 10, 400)
            status, raw, _ = await self.upload(gw.url("/v1/files"), small)
            if status != 200:
                raise RuntimeError(f"upload of the setup file failed: {status} {raw[:300]!r}")
            file_id = orjson.loads(raw)["id"]
            if not self.skip("active", *ROWS[:4]):
                await self.active(gw, file_id)
            input_file = ""  # item 5 also downloads the file item 4 uploads
            if not self.skip("terminal", ROWS[5]):
                await self.terminal(gw, file_id)
            if not self.skip("create", ROWS[6], ROWS[7]):
                await self.create(gw, file_id)
            if not self.skip("list", ROWS[12], ROWS[13]):
                await self.list_pages(gw, file_id)
            self.stop(gw)
            if not self.skip("upload", ROWS[8]):
                input_file = await self.upload_file()
            if not self.skip("download", *ROWS[9:12]):
                await self.download_files(file_id, input_file)
            if not self.skip("workers", ROWS[4]):
                await self.workers(file_id)
            if not self.skip("poller", ROWS[14]):
                await self.poller(file_id, timeout=30 if self.quick else 120)
            skip = litellm_skip or (None if "litellm" in self.only else "skipped (--only)")
            await litellm.bench(self, ROWS[15:19], skip)
            await self.staging_rows()
        self.rows.sort(key=row_order)

    async def staging_rows(self) -> None:
        """Items 9-12, each group on servers of its own (moto, the GCS emulator, gateways);
        item 12 in worker processes only."""
        if not self.skip("bedrock", BEDROCK_UP, BEDROCK_READ):
            await self.staging_bedrock()
        if not self.skip("vertex", VERTEX_UP, VERTEX_READ):
            await self.staging_vertex()
        if not self.skip("accounting", TALLY, ACCOUNT, RETRIEVE):
            await self.accounting()
        if not self.skip("sharding", SHARD_SPLIT, SHARD_MERGE):
            await self.sharding()


def row_order(row: Row) -> int:
    """Position in ROWS of the longest row name that starts this row's name."""
    matches = [(len(n), i) for i, n in enumerate(ROWS) if row.name.startswith(n)]
    return max(matches)[1] if matches else len(ROWS)


async def amain(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    only = set(args.only.split(",")) if args.only else set(GROUPS)
    if unknown := only - set(GROUPS):
        raise SystemExit(f"--only: unknown groups {sorted(unknown)}; known: {', '.join(GROUPS)}")
    if "download" in only:
        only |= {"upload"}  # it downloads its file
    info = {**machine(), "mode": "quick" if args.quick else "full", "rounds": sizes.rounds}
    print(
        f"bench: {info['mode']} run on {info['cores']} cores, uvloop "
        f"{'yes' if info['uvloop'] else 'no'}, best of {sizes.rounds} round(s)"
    )
    litellm_skip = None
    if args.quick:
        litellm_skip = "skipped (--quick)"
    elif args.no_litellm:
        litellm_skip = "skipped (--no-litellm)"
    if args.wait_quiet:
        busy = wait_quiet(args.wait_quiet)
        print(f"bench: machine {busy:.0%} busy before the run")
    info["busy_before"] = round(machine_busy(0.5), 2)
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    suite = Suite(sizes, work, quick=args.quick, only=only)
    t0 = time.perf_counter()
    try:
        await suite.run(litellm_skip)
    except BaseException:
        for proc in suite.procs:
            print(f"--- {proc.name} log (tail) ---\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        suite.cleanup()
        if args.keep:
            print(f"bench: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    suite.notes.append(
        f"whole run: {time.perf_counter() - t0:.0f} s; other load: machine "
        f"{info['busy_before']:.0%} busy just before the run"
    )
    markdown = render_markdown(info, suite.rows, suite.notes)
    print("\n" + markdown)
    out = Path(args.out) if args.out else (None if args.quick or args.only else RESULTS)
    if out is not None:
        write_results(out, info, suite.rows, suite.notes)
        print(f"bench: wrote {out / 'latest.json'} and {out / 'latest.md'}")
    if args.update_readme:
        update_readmes(markdown)
    print(f"bench: {len(suite.rows)} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds, tiny sizes, no LiteLLM")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM baseline")
    parser.add_argument("--only", help=f"comma-separated groups: {', '.join(GROUPS)}")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (the best is kept)")
    parser.add_argument(
        "--out", help="results folder (default bench/results; none for --quick/--only)"
    )
    parser.add_argument("--update-readme", action="store_true", help="rewrite the README tables")
    parser.add_argument(
        "--wait-quiet", type=float, metavar="S", help="first wait up to S s for an idle machine"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(amain(args))
    return uvloop.run(amain(args))
