"""wrk as the load client where the client's own CPU would decide the result.

On two cores the aiohttp client, the simulator and the gateway share the CPU, so
only a client that costs a few µs a request lets a second gateway worker show
what it adds. wrk (C, one thread) cycles through the given paths and prints
its counts and percentiles as one JSON line from the Lua `done` hook.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from bench.load import LoadResult, check_loopback

SCRIPT = """
local paths = {%s}
local i = 0
wrk.headers["Authorization"] = "Bearer bench"
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %%d, "us": %%d, "non2xx": %%d, "socket": %%d,'
    .. ' "p50": %%d, "p90": %%d, "p99": %%d, "max": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(urls: Sequence[str], *, concurrency: int, duration: float) -> LoadResult:
    """GET `urls` in turn over `concurrency` kept-alive connections for `duration`
    seconds (whole seconds: wrk takes no fractions)."""
    for url in urls:
        check_loopback(url)
    parts = urlsplit(urls[0])
    paths = ", ".join(f'"{urlsplit(u).path}"' for u in urls)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(SCRIPT % paths)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "-s", script.name]
            + [f"{parts.scheme}://{parts.netloc}/"],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        ).stdout
    finally:
        Path(script.name).unlink()
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    r = orjson.loads(line[4:])
    errors = r["non2xx"] + r["socket"]
    ms = {q: r[f"p{q}"] / 1000 for q in (50, 90, 99)}
    return LoadResult(
        r["requests"],
        errors,
        r["us"] / 1e6,
        statuses=Counter({200: r["requests"] - errors}) + Counter({0: errors}),
        percentiles_ms=ms | {100: r["max"] / 1000},
    )
