"""Item 12: a sharded batch's bytes, split into children and merged back, in bounded memory.

A 500,000-line, 1 GB input is cut by `gateway.shard_files.split_input` into children of at
most `shard_max_lines` lines (10 of them), and the children's results are merged by
`Merger` into one output and one error file, every custom_id once; both in a fresh
process (bench/staging_worker.py), blobs in a `LocalBlobs` folder. Each child's results
are written beforehand, untimed, so the rows time the split and the merge alone: each
against a plain chunked copy of the same bytes (the input; the children's result files).
"""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

from bench.data import write_jsonl
from bench.report import Row
from bench.staging import SHARD_MERGE, SHARD_SPLIT, Staging, best, size

# Input lines of 2,000 bytes: 500,000 of them make the 1 GB batch.
LINE_BYTES = 2000
# The shard's max_bytes: OpenAI's input file limit, above any child here (lines cut first).
MAX_BYTES = 200_000_000


class Sharding(Staging):
    async def sharding(self) -> None:
        s = self.s
        print("12. sharding", flush=True)
        if find_spec("gateway.shard_files") is None:
            self.add(Row(SHARD_SPLIT, "not in this tree"))
            self.add(Row(SHARD_MERGE, "not in this tree"))
            return
        source = self.work / "sharding-input.jsonl"
        results = self.work / "sharding-results"
        scratch = self.work / "sharding-scratch"
        scratch.mkdir(exist_ok=True)
        try:
            written = write_jsonl(source, s.shard_lines, LINE_BYTES)
            await self._sharding(source, written, results, scratch)
        finally:
            source.unlink(missing_ok=True)
            shutil.rmtree(results, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)

    async def _sharding(self, source: Path, written: int, results: Path, scratch: Path) -> None:
        s = self.s
        common = {"input": str(source), "lines": s.shard_lines}
        common |= {"max_lines": s.shard_max_lines, "max_bytes": MAX_BYTES}
        made = await self.worker({**common, "op": "shard-results", "dir": str(results)})
        assert made["lines"] == s.shard_lines, made
        children, result_bytes = made["children"], made["result_bytes"]
        shard = {**common, "op": "shard", "dir": str(scratch), "results": str(results)}
        shard |= {"children": children, "result_bytes": result_bytes}
        phases = {"split": [str(source)], "merge": made["result_files"]}
        base, ours = await self.worker_pairs(
            {"op": "copy", "dir": str(scratch), "phases": phases}, shard
        )
        for r in ours:  # every custom_id exactly once across the merged files
            merged = r["merge"]
            assert merged["completed"] + merged["failed"] == s.shard_lines, merged
            assert r["merged_lines"] == r["unique_ids"] == s.shard_lines, r
        self.transfer_row(
            f"{SHARD_SPLIT} ({size(written)}, {s.shard_lines:,} lines → {children} children "
            f"of ≤ {s.shard_max_lines:,} lines)",
            [r["split"] for r in ours],
            [r["split"] for r in base],
            base_label="plain copy of the input",
        )
        merged = best([r["merge"] for r in ours])
        self.transfer_row(
            f"{SHARD_MERGE} ({children} children's results, {size(result_bytes)} → one output "
            "and one error file)",
            [r["merge"] for r in ours],
            [r["merge"] for r in base],
            base_label="plain copy of the result files",
            detail=f", {s.shard_lines:,} custom_ids once each ({merged['failed']:,} failed), "
            f"the children's {size(written)} of input read too",
            rate_of="source_bytes",
        )
        total = min(r["split"]["seconds"] + r["merge"]["seconds"] for r in ours)
        plain = min(r["split"]["seconds"] + r["merge"]["seconds"] for r in base)
        self.notes.append(
            f"item 12: split + merge {total:.1f} s against plain copies of the same bytes "
            f"{plain:.1f} s ({total / plain:.1f}×), in a fresh process per round; each child's "
            f"results written beforehand, untimed ({made['outputs']:,} output lines of ~1 KB, "
            f"{made['errors']:,} error lines, {made['missing']:,} lines without a result, "
            "merged as batch_expired); the merge's peak RSS counts from before the split"
        )
