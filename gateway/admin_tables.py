"""The admin CLI's tables and progress line: pure functions of the admin API's JSON.

Every string the API returns may come from a client or a provider (metadata, error
messages), so it is escaped before it reaches the terminal: control characters are shown
as `\\x1b`, `\\n`, ... and never interpreted.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

WIDTH = 80
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean(value: object) -> str:
    """`value` as text with every control/format character escaped (ANSI, newlines, bidi)."""
    text = "-" if value is None else str(value)
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch)[0] == "C":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def columns(text: str) -> int:
    """Terminal columns `text` takes (wide CJK characters take two)."""
    return sum(_char_width(ch) for ch in text)


def fit(value: object, width: int) -> str:
    """`value`, escaped, cut to `width` columns with a trailing "…" when it was longer."""
    text = clean(value)
    if columns(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def _pad(value: object, width: int, right: bool = False) -> str:
    text = fit(value, width)
    gap = " " * (width - columns(text))
    return gap + text if right else text + gap


def _row(cells: list[tuple[object, int, bool]]) -> str:
    return " ".join(_pad(v, w, r) for v, w, r in cells).rstrip()


def _short(n: object) -> str:
    """A count in at most 5 columns: 9,999 / 12k / 3M."""
    if not isinstance(n, int) or isinstance(n, bool):
        return "-"
    if n < 10_000:
        return f"{n:,}"
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n // 1_000_000}M"


def _when(ts: object) -> str:
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _counts(batch: Mapping[str, Any]) -> tuple[int, int, int]:
    counts = batch.get("request_counts") or {}
    values = [counts.get(k) for k in ("completed", "failed", "total")]
    done, failed, total = (v if isinstance(v, int) else 0 for v in values)
    return done, failed, total


# Formatters.

# (title, width, right-aligned): 30 + 11 + 8 + 8 + 11 + 6 + 5 spaces = 79 columns.
_BATCH_COLUMNS = (
    ("id", 30, False),
    ("status", 11, False),
    ("tenant", 8, False),
    ("provider", 8, False),
    ("done/total", 11, True),
    ("failed", 6, True),
)


def _batch_row(item: Mapping[str, Any]) -> str:
    batch = item.get("batch") or {}
    completed, failed, total = _counts(batch)
    values = (
        batch.get("id"),
        batch.get("status"),
        item.get("tenant"),
        item.get("provider"),
        f"{_short(completed + failed)}/{_short(total)}",
        _short(failed),
    )
    return _row([(v, w, r) for v, (_, w, r) in zip(values, _BATCH_COLUMNS, strict=True)])


def batches_table(data: Mapping[str, Any]) -> str:
    """The answer of GET /v1/gateway/admin/batches as a table, newest first."""
    lines = [_row([(t, w, r) for t, w, r in _BATCH_COLUMNS])]
    items = data.get("data") or []
    lines.extend(_batch_row(item) for item in items)
    if not items:
        lines.append("no batches")
    if data.get("has_more"):
        lines.append(fit(f"more: --after {data.get('last_id')}", WIDTH))
    return "\n".join(lines)


def _field(name: str, value: object) -> str:
    return fit(f"{name:<12}{clean(value)}", WIDTH)


def batch_detail(obj: Mapping[str, Any]) -> str:
    """The answer of GET /v1/gateway/admin/batches/{id}: fields, history, attempts, children."""
    batch = obj.get("batch") or {}
    completed, failed, total = _counts(batch)
    lines = [
        _field("batch", batch.get("id")),
        _field("status", batch.get("status")),
        _field("tenant", obj.get("tenant")),
        _field("provider", obj.get("provider")),
        _field("upstream id", obj.get("upstream_id")),
        _field("rule", obj.get("rule")),
        _field("endpoint", batch.get("endpoint")),
        _field("model", batch.get("model")),
        _field("requests", f"{completed + failed:,}/{total:,} done, {failed:,} failed"),
        _field("created", _when(batch.get("created_at"))),
    ]
    for key in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at"):
        if batch.get(key) is not None:
            lines.append(_field(key.removesuffix("_at"), _when(batch[key])))
    for key in ("cancelling_at", "cancelled_at", "expires_at"):
        if batch.get(key) is not None:
            lines.append(_field(key.removesuffix("_at"), _when(batch[key])))
    lines += [
        _field("input file", batch.get("input_file_id")),
        _field("output file", batch.get("output_file_id")),
        _field("error file", batch.get("error_file_id")),
    ]
    usage = batch.get("usage")
    if isinstance(usage, Mapping):
        lines.append(
            _field("tokens", f"{usage.get('input_tokens')} in, {usage.get('output_tokens')} out")
        )
    metadata = batch.get("metadata")
    if isinstance(metadata, Mapping) and metadata:
        lines.append("metadata:")
        lines.extend(fit(f"  {clean(k)}={clean(v)}", WIDTH) for k, v in metadata.items())
    errors = (batch.get("errors") or {}).get("data") or []
    if errors:
        lines.append("errors:")
        for error in errors:
            where = f" line {error['line']}" if error.get("line") is not None else ""
            text = f"  {clean(error.get('code'))}{where}: {clean(error.get('message'))}"
            lines.append(fit(text, WIDTH))
    history = obj.get("history") or []
    if history:
        lines.append("history:")
        lines.extend(
            fit(f"  {_when(h.get('at'))}  {clean(h.get('status'))}", WIDTH) for h in history
        )
    attempts = obj.get("attempts") or []
    if attempts:
        lines.append("attempts:")
        for a in attempts:
            text = f"  {_when(a.get('at'))}  {clean(a.get('provider'))} {clean(a.get('outcome'))}"
            if a.get("error"):
                text += f": {clean(a['error'])}"
            lines.append(fit(text, WIDTH))
    children = obj.get("children") or []
    if children:
        lines.append("children:")
        lines.append(batches_table({"data": children}))
    return "\n".join(lines)


# 14 + 10 + 3 + 9 + 7 + 6 + 8 + 8 + 6 + 8 spaces = 79 columns.
_PROVIDER_COLUMNS = (
    ("name", 14, False),
    ("type", 10, False),
    ("on", 3, False),
    ("breaker", 9, False),
    ("calls", 7, True),
    ("err%", 6, True),
    ("p50 ms", 8, True),
    ("p95 ms", 8, True),
    ("active", 6, True),
)


def _number(value: object, spec: str) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return format(value, spec)


def providers_table(obj: Mapping[str, Any]) -> str:
    """The answer of GET /v1/gateway/admin/providers: health per provider, then the routes."""
    lines = [_row([(t, w, r) for t, w, r in _PROVIDER_COLUMNS])]
    for p in obj.get("data") or []:
        rate = p.get("error_rate")
        values = (
            p.get("name"),
            p.get("type"),
            "yes" if p.get("enabled") else "no",
            p.get("breaker") or "-",
            _short(p.get("calls")),
            _number(rate * 100 if isinstance(rate, int | float) else None, ".1f"),
            _number(p.get("latency_p50_ms"), ",.0f"),
            _number(p.get("latency_p95_ms"), ",.0f"),
            _short(p.get("active_batches")),
        )
        lines.append(
            _row([(v, w, r) for v, (_, w, r) in zip(values, _PROVIDER_COLUMNS, strict=True)])
        )
    routes = obj.get("routes") or []
    if routes:
        lines.append("routes:")
        lines.extend(fit(f"  {clean(route)}", WIDTH) for route in routes)
    return "\n".join(lines)


def progress_bar(counts: Mapping[str, Any] | None, width: int = 20) -> str:
    """`[####x.....] 512/1,000 done, 3 failed`: `width` cells, # completed, x failed.

    "done" counts every line the provider has finished with, failed ones included."""
    counts = counts or {}
    completed, failed, total = (
        v if isinstance(v, int) and v >= 0 else 0
        for v in (counts.get("completed"), counts.get("failed"), counts.get("total"))
    )
    done = completed + failed
    if total > 0:
        ok_cells = min(width, completed * width // total)
        bad_cells = min(width - ok_cells, -(-failed * width // total))  # any failure shows
    else:
        ok_cells = bad_cells = 0
    bar = "#" * ok_cells + "x" * bad_cells + "." * (width - ok_cells - bad_cells)
    return f"[{bar}] {done:,}/{total:,} done, {failed:,} failed"


def watch_line(batch: Mapping[str, Any], width: int = 20) -> str:
    """One redraw of `watch`: the bar and the batch's status, within 80 columns."""
    return fit(f"{progress_bar(batch.get('request_counts'), width)}  {batch.get('status')}", WIDTH)


# HTTP.
