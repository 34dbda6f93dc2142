"""`batch-gateway usage`: the usage report of /v1/gateway/usage, read from the store, as an
80-column table or as CSV."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime
from typing import Any

from gateway.pricing import month_start
from gateway.store import open_store
from gateway.store.usage import SUM_NAMES

COLUMNS = (
    ("batches", "batches", 7),
    ("prompt_tokens", "prompt", 12),
    ("completion_tokens", "completion", 12),
    ("cached_tokens", "cached", 10),
    ("cost_usd", "cost USD", 11),
)
ALL_COLUMNS = SUM_NAMES


def since(value: str | None, now: float) -> int:
    """`--since`: a date (YYYY-MM-DD), a number of days back (`7d`), or this month."""
    if value is None:
        return month_start(now)
    if value.endswith("d") and value[:-1].isdigit():
        return int(now) - int(value[:-1]) * 86400
    return int(datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())


async def read(url: str, group_by: str, start: int, tenant: str | None) -> list[dict[str, Any]]:
    store = await open_store(url)
    try:
        rows = await store.usage_report(group_by, start, int(time.time()) + 1, tenant)
    finally:
        await store.close()
    if group_by == "day":
        for row in rows:
            row["day"] = datetime.fromtimestamp(int(row["day"]), UTC).strftime("%Y-%m-%d")
    return rows


def as_csv(group_by: str, rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((group_by, *ALL_COLUMNS))
    for row in rows:
        writer.writerow((row[group_by], *("" if row[c] is None else row[c] for c in ALL_COLUMNS)))
    return out.getvalue()


def as_table(group_by: str, rows: list[dict[str, Any]]) -> str:
    width = 80 - sum(w + 1 for _, _, w in COLUMNS)
    lines = [f"{group_by:<{width}}" + "".join(f" {t:>{w}}" for _, t, w in COLUMNS)]
    for row in rows:
        name = str(row[group_by])
        name = name if len(name) <= width else name[: width - 1] + "~"
        lines.append(
            f"{name:<{width}}" + "".join(f" {_cell(row[c], c):>{w}}" for c, _, w in COLUMNS)
        )
    unpriced = sum(row["unpriced_tokens"] for row in rows)
    if unpriced:
        lines.append(f"{unpriced} tokens have no known price: their cost is not included")
    if not rows:
        lines.append("no usage recorded in this period")
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if column == "cost_usd":
        return f"{value:,.4f}"
    return f"{value:,}"
