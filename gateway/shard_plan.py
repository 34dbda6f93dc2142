"""What a sharded batch is made of, as pure functions: its plan (fixed at create), how
its children are spread over providers, and its status and counts while they run.
`gateway.sharding` runs it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.store import BatchRecord, FileRecord
from gateway.store.base import ShardRow
from providers.base import TERMINAL_STATUSES
from providers.results import CANCELLED, EXPIRED, stable_hex

RUNNING = frozenset({"in_progress", "finalizing", "cancelling"})


@dataclass(frozen=True, slots=True)
class Plan:
    """A sharded batch's plan, fixed at create (a config reload does not change it)."""

    across: tuple[tuple[str, float], ...]
    max_lines: int
    max_bytes: int
    salt: str
    heal_on: tuple[str, ...] = ()
    max_attempts: int = 1
    codes: tuple[int | str, ...] = ()
    cancelled: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "across": [list(t) for t in self.across],
            "max_lines": self.max_lines,
            "max_bytes": self.max_bytes,
            "salt": self.salt,
            "heal_on": list(self.heal_on),
            "max_attempts": self.max_attempts,
            "codes": list(self.codes),
            "cancelled": self.cancelled,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(
            across=tuple((str(n), float(w)) for n, w in data["across"]),
            max_lines=int(data["max_lines"]),
            max_bytes=int(data["max_bytes"]),
            salt=str(data["salt"]),
            heal_on=tuple(data.get("heal_on") or ()),
            max_attempts=int(data.get("max_attempts") or 1),
            codes=tuple(data.get("codes") or ()),
            cancelled=bool(data.get("cancelled")),
        )

    def child_ids(self, parent_id: str, position: int, attempt: int) -> tuple[str, str]:
        """(batch id, input file id) of a child: the same on every try of a split."""
        base = (self.salt, parent_id, position, attempt)
        return f"batch_{stable_hex(*base, 'batch')}", f"file-{stable_hex(*base, 'file')}"


def spread(n: int, across: Sequence[tuple[str, float]]) -> list[str]:
    """n children's providers by weight, interleaved (smooth weighted round-robin)."""
    total = sum(w for _, w in across)
    current = dict.fromkeys((name for name, _ in across), 0.0)
    out = []
    for _ in range(n):
        for name, weight in across:
            current[name] += weight
        best = max(current, key=lambda name: current[name])
        current[best] -= total
        out.append(best)
    return out


def missing_code(child: BatchRecord) -> tuple[str, str]:
    """The error a child's lines get when the child has no result for them."""
    if child.status == "expired":
        return EXPIRED
    if child.status == "cancelled":
        return CANCELLED
    errors = (child.object.get("errors") or {}).get("data") or []
    reason = errors[0].get("message") if errors else None
    return "batch_failed", reason or "The batch this request ran in failed."


def progress(
    parent: BatchRecord, children: Sequence[tuple[ShardRow, BatchRecord]], plan: Plan
) -> dict[str, Any]:
    """The parent's object while it runs: status and counts from its children's rows."""
    obj = dict(parent.object)
    completed = failed = 0
    for row, child in children:
        counts = child.object.get("request_counts") or {}
        completed += counts.get("completed", 0)
        failed += counts.get("failed", 0)
        if row.heals is not None:
            failed -= row.lines  # being re-run: not failed (yet)
    total = obj["request_counts"]["total"]
    obj["request_counts"] = {"total": total, "completed": completed, "failed": max(0, failed)}
    statuses = {child.status for _, child in children}
    if plan.cancelled:
        status = "cancelling"
    elif statuses & (RUNNING | TERMINAL_STATUSES):
        status = "in_progress"
    else:
        status = "validating"
    if obj["status"] != status and obj["status"] not in ("finalizing", "cancelling"):
        obj["status"] = status
        if status == "in_progress" and obj.get("in_progress_at") is None:
            obj["in_progress_at"] = int(time.time())
    return obj


def shard_error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": None}


def replace_plan(plan: Plan, **changes: Any) -> Plan:
    return Plan.from_json({**plan.as_json(), **changes})


def refuse_oversized(file: FileRecord, lines: int, size: int) -> None:
    """A create that does not shard gets the upload limits of one that cannot."""
    if (file.line_count or 0) > lines or file.bytes > size:
        raise InvalidRequest(
            f"The input file has {file.line_count} requests and {file.bytes} bytes; a batch"
            f" may have at most {lines} requests and {size} bytes unless its route shards it"
            " (`routes[].shard` in the gateway's config).",
            param="input_file_id",
            code="file_too_large",
        )
