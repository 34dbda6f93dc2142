"""Rows of the results table, and where they are written (stdout, JSON, Markdown, READMEs)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.load import LoadResult
from bench.procs import REPO

MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass
class Row:
    name: str
    measured: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[str]:
        met = {True: "yes", False: "**no**", None: "—"}[self.met]
        return [self.name, self.measured, self.baseline, self.ratio, self.target, met]

    def line(self) -> str:
        c = self.cells()
        return f"  {c[0]:<48} {c[1]} | baseline: {c[2]} | {c[3]} | met: {c[5]}"


def ms(x: float) -> str:
    return f"{x:.2f} ms"


def rps(x: float) -> str:
    return f"{x:,.0f} req/s"


def lat(r: LoadResult) -> str:
    return f"p50 {ms(r.p50)}, p99 {ms(r.p99)}"


def cpu(r: LoadResult) -> str:
    """The server's CPU time per request (all its threads): steadier than req/s on a busy box."""
    us = r.extra.get("server_cpu_us_per_request")
    return f"{us:,} µs CPU/req" if us is not None else "CPU n/a"


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # noqa: F401

        has_uvloop = True
    except ImportError:
        has_uvloop = False
    return {
        "date": dt.date.today().isoformat(),
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "uvloop": has_uvloop,
    }


def render_markdown(info: dict[str, Any], rows: list[Row], notes: list[str]) -> str:
    head = ["Benchmark", "Measured", "Baseline (same run)", "Ratio", "Target", "Met"]
    lines = [
        f"{info['date']} · {info['cores']} cores ({info['cpu'] or 'unknown CPU'}) · "
        f"Python {info['python']} · aiohttp {info['aiohttp']} · "
        f"uvloop {'yes' if info['uvloop'] else 'no'} · `python -m bench"
        f"{' --quick' if info['mode'] == 'quick' else ''}` · "
        f"best of {info['rounds']} round(s)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def write_results(out: Path, info: dict[str, Any], rows: list[Row], notes: list[str]) -> None:
    """latest.json (every number) and latest.md (the table), each written then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**info, "rows": [asdict(r) for r in rows], "notes": notes}
    option = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    for name, content in (
        ("latest.json", orjson.dumps(data, option=option) + b"\n"),
        ("latest.md", render_markdown(info, rows, notes).encode()),
    ):
        tmp = out / f"{name}.tmp"
        tmp.write_bytes(content)
        tmp.replace(out / name)


def update_readmes(markdown: str) -> None:
    """Replace the table between the bench markers in README.md and bench/README.md."""
    for path in (REPO / "README.md", REPO / "bench" / "README.md"):
        text = path.read_text()
        if MARK_START not in text or MARK_END not in text:
            print(f"bench: {path.name} has no bench markers; not updated")
            continue
        before, rest = text.split(MARK_START, 1)
        after = rest.split(MARK_END, 1)[1]
        path.write_text(f"{before}{MARK_START}\n{markdown}{MARK_END}{after}")
        print(f"bench: updated {path.relative_to(REPO)}")
