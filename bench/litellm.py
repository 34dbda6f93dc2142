"""The LiteLLM proxy as a baseline: its own venv, its defaults, the same simulator.

`bench/.venv-litellm` is created on first use. `litellm[proxy]==1.110.2` is tried
first; that release's `proxy` extra pins `litellm-proxy` and post-releases of
`litellm-proxy-extras` / `litellm-enterprise` that a package index may not carry,
so the fallback installs the same `litellm==1.110.2` (which contains the proxy
server and the `litellm` command) with the extra's runtime dependencies listed
here. If neither works the reason is printed and the benchmark goes on without
LiteLLM.

The proxy runs as `litellm --config …` with its default worker settings (one
uvicorn worker), no database and no master key. Its Files and Batches routes
fall back to the `openai` provider configured from `OPENAI_API_KEY` /
`OPENAI_BASE_URL`, which point at the simulator. Offline mode keeps it from
fetching its model price map from the internet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from bench.data import ENDPOINT, write_jsonl
from bench.harness import Harness, Server
from bench.load import LoadResult
from bench.procs import Proc, free_port
from bench.report import Row, lat, mb, ms, rps

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-litellm"
VERSION = "1.110.2"
PROXY_DEPS = (
    "gunicorn>=23,<24",
    "uvicorn>=0.33,<1",
    "uvloop>=0.22.1,<1",
    "fastapi>=0.136.3,<1",
    "starlette>=1.0.1,<2",
    "backoff>=2.2.1",
    "pyyaml>=6.0.3",
    "rq>=2.7",
    "orjson>=3.11.6",
    "apscheduler>=3.11.2,<4",
    "fastapi-sso>=0.19",
    "pyjwt>=2.13",
    "python-multipart>=0.0.27",
    "cryptography>=49,<51",
    "pynacl>=1.6.2",
    "websockets>=15.0.1,<16",
    "litellm-proxy-extras",
    "litellm-enterprise",
    "backports-zstd",
    "semver>=3.0.4",
    "rich>=13.9.4,<14",
    "expression>=5.6",
    "polars>=1.38.1",
    "soundfile",
    "tomlkit",
    "inquirerpy",
    "restrictedpython>=8.5,<9",
    "mcp>=2.3,<3",
    "httpx2>=2.10,<3",
    "azure-identity",
    "azure-storage-blob",
    "hiredis",
    "granian>=2.7.4,<3",
)
INSTALL_TIMEOUT = 1200


def executable() -> Path:
    return VENV / "bin" / "litellm"


def installed_version() -> str | None:
    py = VENV / "bin" / "python"
    if not executable().exists() or not py.exists():
        return None
    out = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() or None if out.returncode == 0 else None


def _pip(args: list[str], log: Path) -> bool:
    with open(log, "ab") as fh:
        try:
            done = subprocess.run(
                [str(VENV / "bin" / "pip"), "install", "--disable-pip-version-check", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def ensure(log: Path) -> tuple[str | None, str]:
    """(installed version, how or why not)."""
    version = installed_version()
    if version:
        return version, f"reused {VENV.relative_to(BENCH.parent)}"
    print(f"  installing litellm {VERSION} into {VENV} (log: {log}) ...", flush=True)
    if not (VENV / "bin" / "pip").exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True)
        if made.returncode != 0:
            return None, f"cannot create the venv: {made.stderr.decode()[-300:]}"
    if _pip([f"litellm[proxy]=={VERSION}"], log):
        how = f"litellm[proxy]=={VERSION}"
    elif _pip([f"litellm=={VERSION}", *PROXY_DEPS], log):
        how = f"litellm=={VERSION} + the proxy's dependencies ([proxy] pins are not on the index)"
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return None, "pip install failed: " + " | ".join(tail)
    return installed_version(), how


def start(sim_port: int, port: int, work: Path) -> Proc:
    config = work / "litellm.yaml"
    upstream = f"http://127.0.0.1:{sim_port}/v1"
    config.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-bench\n"
        "files_settings:\n"
        "  - custom_llm_provider: openai\n"
        f"    api_base: {upstream}\n"
        "    api_key: sk-bench\n"
    )
    env = {
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": upstream,
        "OPENAI_API_BASE": upstream,
        # No traffic off the machine: bundled price map, no hub downloads.
        "LITELLM_OFFLINE_MODE": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        # Local benchmark only: no master key and no database, as measured in the issue.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    argv = [str(executable()), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return Proc("litellm", argv, work, env=env, cwd=work, pythonpath=False)


async def bench(h: Harness, rows: tuple[str, ...], skip: str | None) -> None:
    """Item 8: LiteLLM's retrieve, create and upload against the same simulator."""
    if skip:
        for name in rows:
            h.add(Row(name, skip))
        return
    print("8. LiteLLM", flush=True)
    version, how = ensure(h.work / "litellm-install.log")
    if version is None:
        print(f"  LiteLLM not available: {how}", flush=True)
        for name in rows:
            h.add(Row(name, f"not available: {how}"))
        return
    h.notes.append(f"item 8: LiteLLM {version} ({how}), one uvicorn worker, no database")
    port = free_port()
    proc = start(int(h.sim.base.rsplit(":", 1)[1]), port, h.work)
    h.procs.append(proc)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
    except RuntimeError as exc:
        for name in rows:
            h.add(Row(name, f"not available: LiteLLM did not start ({str(exc)[:200]})"))
        return
    server = Server(proc, f"http://127.0.0.1:{port}")
    try:
        await _measure(h, server, rows, f"LiteLLM {version}")
    finally:
        h.stop(server)


def _added_latency_row(h: Harness, name: str, tag: str, got: LoadResult, ours: Row | None) -> None:
    """LiteLLM's added p50 next to the gateway's from the same run (when that row ran)."""
    if ours is None:
        h.add(Row(name, f"{tag}: {lat(got)}", data={"litellm": got.summary()}))
        return
    added = got.p50 - ours.data["direct"]["p50_ms"]
    gw_added = ours.data["added_p50_ms"]
    h.add(
        Row(
            name,
            f"{tag}: {lat(got)}, +{ms(added)} over direct",
            f"gateway +{ms(gw_added)} over direct",
            f"gateway adds {added / max(gw_added, 0.001):,.0f}× less",
            "gateway ahead",
            gw_added < added,
            {"litellm": got.summary(), "litellm_added_p50_ms": added},
        )
    )


async def _measure(h: Harness, ll: Server, rows: tuple[str, ...], tag: str) -> None:
    s = h.s
    cap = max(15.0, s.duration)  # LiteLLM answers tens of requests per second
    n = s.litellm_requests
    urls = [ll.url(f"/v1/batches/batch_sim{i + 1}") for i in range(64)]

    c1 = await h.load(ll, urls, 1, min(n, 500), warmup=20, duration=cap)
    _added_latency_row(h, rows[0], tag, c1, h.find("1. active retrieve c=1"))

    c64 = await h.load(ll, urls, 64, n, warmup=64, duration=cap)
    ours = h.find("1. active retrieve c=64")
    gw_rps = ours.data["gateway"]["rps"] if ours else float("nan")
    h.add(
        Row(
            rows[1],
            f"{tag}: {rps(c64.rps)}, {lat(c64)}",
            f"gateway {rps(gw_rps)}",
            f"gateway {gw_rps / max(c64.rps, 0.001):,.1f}×",
            "gateway ahead",
            gw_rps > c64.rps,
            {"litellm": c64.summary(), "statuses": dict(c64.statuses)},
        )
    )

    body = orjson.dumps(
        {"input_file_id": "file-sim1", "endpoint": ENDPOINT, "completion_window": "24h"}
    )
    cr = await h.load(
        ll, ll.url("/v1/batches"), 1, min(n, 300), warmup=10, duration=cap, method="POST", body=body
    )
    _added_latency_row(h, rows[2], tag, cr, h.find("3. create c=1"))

    path = h.work / "litellm-upload.jsonl"
    size = write_jsonl(path, s.litellm_upload_lines, s.line_bytes)
    label = f"{rows[3]} ({size / 1e6:.0f} MB, {s.litellm_upload_lines:,} lines)"
    before = (await h.json("GET", h.sim.url("/_stats"))).get("upload_bytes", 0)
    async with h.rss_watch(ll.proc) as mem:
        status, raw, seconds = await h.upload(ll.url("/v1/files"), path, timeout=300)
    forwarded = (await h.json("GET", h.sim.url("/_stats"))).get("upload_bytes", 0) - before
    if status != 200:
        h.add(Row(label, f"{tag}: failed, HTTP {status}: {raw[:160]!r}"))
        return
    rate = size / 1e6 / seconds
    ours = h.find("4. upload")
    gw_rate = ours.data["mb_per_s"] if ours else float("nan")
    gw_growth = ours.data["growth_kb"] if ours else float("nan")
    h.add(
        Row(
            label,
            f"{tag}: {rate:,.0f} MB/s, peak RSS +{mb(mem['growth_kb'])},"
            f" {forwarded / 1e6:.0f} MB forwarded to the simulator",
            f"gateway {gw_rate:,.0f} MB/s, +{mb(gw_growth)}",
            f"gateway {gw_rate / rate:,.1f}×",
            "gateway ahead",
            gw_rate > rate,
            {
                "litellm_mb_per_s": rate,
                "bytes": size,
                "forwarded_bytes": forwarded,
                "seconds": seconds,
                **mem,
            },
        )
    )
