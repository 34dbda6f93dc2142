"""`python -m bench --quick` still runs end to end and prints every row; no speed is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from bench.cases import ROWS
from bench.run import QUICK
from bench.staging import RETRIEVE, SHARD_MERGE, STAGING_ROWS

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_runs_and_prints_every_row(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ROWS:
        assert name in done.stdout, f"row {name!r} missing:\n{done.stdout[-3000:]}"
    results = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert len(results["rows"]) == len(ROWS)
    assert (tmp_path / "latest.md").read_text().count("\n| ") >= len(ROWS)
    # The --workers row is measured with wrk (.ci/run installs it), against one process.
    [workers] = [r for r in results["rows"] if r["name"] == ROWS[4]]
    assert "wrk client" in workers["measured"], workers
    assert workers["data"]["one_process"]["requests"] > 0
    # Items 9-12 measure for real even at --quick sizes: a time and a peak RSS growth each
    # (the bedrock and vertex rows through the adapters, on moto and the GCS emulator).
    for name in STAGING_ROWS:
        [row] = [r for r in results["rows"] if r["name"].startswith(name)]
        if name == RETRIEVE:
            assert row["data"]["during"][0]["requests"] > 0, row
            continue
        assert row["data"]["ours"]["seconds"] > 0, row
        assert "growth_kb" in row["data"]["ours"] and "peak RSS" in row["measured"], row
    # Item 12's merge gives every input line exactly one result line.
    [merge] = [r for r in results["rows"] if r["name"].startswith(SHARD_MERGE)]
    merged = merge["data"]["ours"]
    assert merged["completed"] + merged["failed"] == QUICK.shard_lines, merged
    assert merged["expired"] > 0, merged
