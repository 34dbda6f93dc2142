"""Usage rows, spend estimates and reports, in the SQL SQLite and PostgreSQL share (a mixin
of SQLStore).

Exactly once: `record_usage` writes a batch's rows in the transaction that sets its
`accounted_at`, and only if that was still NULL, so a second writer (another replica, a
re-run after a crash) writes nothing; the rows' primary key (batch, model) backs it up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson

from gateway.store.base import BatchRecord, UsageRow
from gateway.store.migrate import Executor
from gateway.store.rows import BATCH_COLS, batch_from_row, to_json

TERMINAL = "status IN ('completed', 'failed', 'expired', 'cancelled')"
_ROW_COLS = (
    "batch_id, model, tenant, provider, endpoint, accounted_at, lines_succeeded, lines_failed,"
    " prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens,"
    " cost_usd, price"
)
# What a report may group by, as SQL over usage_rows.
GROUPS = {
    "tenant": "tenant",
    "provider": "provider",
    "model": "model",
    "day": "(accounted_at - accounted_at % 86400)",
}
_SUMS = (
    "COUNT(DISTINCT batch_id), SUM(lines_succeeded), SUM(lines_failed), SUM(prompt_tokens),"
    " SUM(completion_tokens), SUM(total_tokens), SUM(cached_tokens), SUM(reasoning_tokens),"
    " SUM(cost_usd), SUM(CASE WHEN cost_usd IS NULL THEN total_tokens ELSE 0 END)"
)
SUM_NAMES = (
    "batches",
    "lines_succeeded",
    "lines_failed",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_tokens",
)


class UsageStore(ABC):
    """The Store's usage methods, over the connections SQLStore provides."""

    @abstractmethod
    def _conn(self) -> AbstractAsyncContextManager[Executor]: ...

    @abstractmethod
    def _tx(self) -> AbstractAsyncContextManager[Executor]: ...

    async def batches_to_account(self, after: int, limit: int) -> list[tuple[int, BatchRecord]]:
        """(seq, batch) for ended batches whose usage is not written yet, after `after`."""
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {BATCH_COLS}, seq FROM batches WHERE accounted_at IS NULL"
                f" AND {TERMINAL} AND seq > ? ORDER BY seq LIMIT ?",
                after,
                limit,
            )
        return [(row[-1], batch_from_row(row)) for row in rows]

    async def record_usage(
        self, batch_id: str, rows: Sequence[UsageRow], usage: dict[str, Any] | None, now: float
    ) -> bool:
        """Write a batch's usage rows, and `usage` into its object where the provider gave
        none; False (and nothing written) if it was accounted already."""
        async with self._tx() as db:
            found = await db.fetch(
                "SELECT object FROM batches WHERE id = ? AND accounted_at IS NULL", batch_id
            )
            if not found:
                return False
            obj = orjson.loads(found[0][0])
            if usage is not None and obj.get("usage") is None:
                obj["usage"] = usage
            if not await db.fetch(
                "UPDATE batches SET accounted_at = ?, object = ? WHERE id = ?"
                " AND accounted_at IS NULL RETURNING id",
                float(now),
                to_json(obj),
                batch_id,
            ):
                return False
            for row in rows:
                await db.execute(
                    f"INSERT INTO usage_rows ({_ROW_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    batch_id,
                    row.model,
                    row.tenant,
                    row.provider,
                    row.endpoint,
                    int(now),
                    row.lines_succeeded,
                    row.lines_failed,
                    row.prompt_tokens,
                    row.completion_tokens,
                    row.total_tokens,
                    row.cached_tokens,
                    row.reasoning_tokens,
                    row.cost_usd,
                    to_json(row.price) if row.price is not None else None,
                )
            await db.execute("DELETE FROM usage_estimates WHERE batch_id = ?", batch_id)
        return True

    async def usage_rows(self, batch_id: str) -> list[UsageRow]:
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {_ROW_COLS} FROM usage_rows WHERE batch_id = ? ORDER BY model", batch_id
            )
        return [_usage_row(row) for row in rows]

    async def put_estimate(self, batch_id: str, tenant: str, cost_usd: float, now: float) -> None:
        async with self._conn() as db:
            await db.execute(
                "INSERT INTO usage_estimates (batch_id, tenant, cost_usd, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (batch_id) DO NOTHING",
                batch_id,
                tenant,
                float(cost_usd),
                float(now),
            )

    async def spend(self, tenant: str, since: int) -> tuple[float, float]:
        """(cost of the usage recorded since `since`, estimated cost of the batches still
        to be accounted) for a tenant."""
        async with self._conn() as db:
            spent = await db.fetch(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_rows"
                " WHERE tenant = ? AND accounted_at >= ?",
                tenant,
                since,
            )
            committed = await db.fetch(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_estimates WHERE tenant = ?",
                tenant,
            )
        return float(spent[0][0]), float(committed[0][0])

    async def usage_report(
        self, group_by: str, start: int, end: int, tenant: str | None
    ) -> list[dict[str, Any]]:
        """Totals per group of the usage recorded in [start, end)."""
        group = GROUPS[group_by]
        where = "accounted_at >= ? AND accounted_at < ?"
        args: list[Any] = [start, end]
        if tenant is not None:
            where += " AND tenant = ?"
            args.append(tenant)
        async with self._conn() as db:
            rows = await db.fetch(
                f"SELECT {group}, {_SUMS} FROM usage_rows WHERE {where}"
                f" GROUP BY {group} ORDER BY {group}",
                *args,
            )
        return [{group_by: row[0], **_sums(row[1:])} for row in rows]


def _sums(values: Sequence[Any]) -> dict[str, Any]:
    return {name: _number(v) for name, v in zip(SUM_NAMES, values, strict=True)}


def _number(value: Any) -> Any:
    """SQL sums as JSON numbers: integers stay integers, a sum of NULL costs stays NULL."""
    if value is None or isinstance(value, int):
        return value
    as_float = float(value)
    return int(as_float) if as_float.is_integer() and not isinstance(value, float) else as_float


def _usage_row(row: Any) -> UsageRow:
    return UsageRow(
        model=row[1],
        tenant=row[2],
        provider=row[3],
        endpoint=row[4],
        accounted_at=row[5],
        lines_succeeded=row[6],
        lines_failed=row[7],
        prompt_tokens=row[8],
        completion_tokens=row[9],
        total_tokens=row[10],
        cached_tokens=row[11],
        reasoning_tokens=row[12],
        cost_usd=row[13],
        price=orjson.loads(row[14]) if row[14] is not None else None,
        batch_id=row[0],
    )
