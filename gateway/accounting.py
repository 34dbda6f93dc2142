"""Usage and cost of every ended batch, recorded exactly once.

When a batch has ended (completed; failed, expired or cancelled, with whatever output ran),
the accountant reads its output and error files once, streamed, and sums usage per model.
The rows go to the store in the transaction that marks the batch accounted, and only if it
was not already (`Store.record_usage`): whoever saw the end first (a retrieve, the poller,
another replica) and however many processes sweep, one set of rows is written; a crash
before that commit leaves nothing, and the next sweep does it again. The batch object gets
`usage` in OpenAI's shape where its provider gave none.

A remote provider's output is read from the gateway's kept copy: the accountant waits for
the keeper (up to KEEP_WAIT_SECONDS after the end) rather than download it twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass

import orjson

from gateway.config import SHARDED
from gateway.pricing import Price, Pricing
from gateway.service import GatewayService
from gateway.store import BatchRecord, FileRecord
from gateway.store.base import UsageRow
from providers.http import iter_lines
from providers.results import batch_usage

log = logging.getLogger("gateway.accounting")

PAGE = 100
KEEP_WAIT_SECONDS = 600.0
UNKNOWN_MODEL = "unknown"


@dataclass(slots=True)
class ModelTally:
    lines_succeeded: int = 0
    lines_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, usage: object) -> None:
        """One response body's `usage`: chat/completions/embeddings say prompt/completion
        tokens, Responses bodies input/output tokens."""
        if not isinstance(usage, dict):
            return
        prompt = _int(usage, "prompt_tokens", "input_tokens")
        completion = _int(usage, "completion_tokens", "output_tokens")
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens += _int(usage, "total_tokens") or prompt + completion
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        if isinstance(details, dict):
            self.cached_tokens += _int(details, "cached_tokens")
        details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
        if isinstance(details, dict):
            self.reasoning_tokens += _int(details, "reasoning_tokens")


def _int(data: dict[str, object], *names: str) -> int:
    for name in names:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


async def tally_lines(
    chunks: AsyncIterator[bytes], tallies: dict[str, ModelTally], *, fallback_model: str
) -> None:
    """Add one result file's lines (OpenAI batch line shape) to `tallies`, by model.

    A successful line counts under its body's `model`; a failed one (which rarely names
    a model) under `fallback_model`, the batch's.
    """
    async for raw in iter_lines(_yielding(chunks)):
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        response = line.get("response") if isinstance(line, dict) else None
        body = response.get("body") if isinstance(response, dict) else None
        status = response.get("status_code") if isinstance(response, dict) else None
        ok = isinstance(status, int) and 200 <= status < 300 and isinstance(body, dict)
        model = body.get("model") if ok and isinstance(body, dict) else None
        tally = tallies.setdefault(
            model if isinstance(model, str) and model else fallback_model, ModelTally()
        )
        if ok:
            tally.lines_succeeded += 1
            tally.add(body.get("usage") if isinstance(body, dict) else None)
        else:
            tally.lines_failed += 1


async def _yielding(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks, with the event loop let in after each: a local blob's reads never wait,
    and a 1 GB file parsed in one go would hold every request for seconds."""
    async for chunk in chunks:
        yield chunk
        await asyncio.sleep(0)


def usage_rows(
    record: BatchRecord, tallies: dict[str, ModelTally], pricing: Pricing
) -> list[UsageRow]:
    endpoint = str(record.object.get("endpoint") or "")
    rows = []
    for model, tally in sorted(tallies.items()):
        price: Price | None = pricing.price(record.provider, model)
        cost = None
        if price is not None:
            cost = price.cost(tally.prompt_tokens, tally.completion_tokens, tally.cached_tokens)
        rows.append(
            UsageRow(
                model=model,
                tenant=record.tenant,
                provider=record.provider,
                endpoint=endpoint,
                lines_succeeded=tally.lines_succeeded,
                lines_failed=tally.lines_failed,
                prompt_tokens=tally.prompt_tokens,
                completion_tokens=tally.completion_tokens,
                total_tokens=tally.total_tokens,
                cached_tokens=tally.cached_tokens,
                reasoning_tokens=tally.reasoning_tokens,
                cost_usd=cost,
                price=price.as_json() if price is not None else None,
            )
        )
    return rows


def batch_object_usage(rows: list[UsageRow]) -> dict[str, object]:
    usage = batch_usage(
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
        sum(r.cached_tokens for r in rows),
        sum(r.reasoning_tokens for r in rows),
    )
    usage["total_tokens"] = sum(r.total_tokens for r in rows)
    return usage


class Accountant:
    def __init__(self, service: GatewayService, *, sweep_seconds: float) -> None:
        self.service = service
        self.sweep_seconds = sweep_seconds

    async def run(self) -> None:
        """Sweep at start, every `sweep_seconds`, and at once when a batch ends or is kept
        here."""
        due = self.service.usage_due
        while True:
            due.clear()  # before the sweep: a batch ending during it wakes the next one
            try:
                await self.sweep()
            except Exception as exc:  # the store may be briefly unreachable
                log.error("accounting: sweep failed: %s", type(exc).__name__)
            # Not wait_for: on Python 3.11 it can swallow a cancel (see the keeper).
            with suppress(TimeoutError):
                async with asyncio.timeout(self.sweep_seconds):
                    await due.wait()

    async def sweep(self) -> int:
        """Account every ended batch not accounted yet; returns how many this call wrote."""
        written, after = 0, 0
        while page := await self.service.store.batches_to_account(after, PAGE):
            for seq, record in page:
                after = seq
                try:
                    written += await self.account(record)
                except Exception as exc:  # one unreadable file must not stop the others
                    log.warning(
                        "accounting: batch %s not accounted yet (%s)", record.id, type(exc).__name__
                    )
            if len(page) < PAGE:
                break
        return written

    async def account(self, record: BatchRecord) -> bool:
        """Read the batch's results and write its usage; False if not ready or done already."""
        svc = self.service
        if record.provider == SHARDED:
            return await self._account_parent(record)
        fallback = str(record.object.get("model") or UNKNOWN_MODEL)
        tallies: dict[str, ModelTally] = {}
        for key in ("output_file_id", "error_file_id"):
            file_id = record.object.get(key)
            file = await svc.store.get_file(file_id) if isinstance(file_id, str) else None
            if file is None:
                continue  # none, or expired or deleted before it could be read
            if not self._readable(record, file):
                return False
            if len(tallies) == 1:  # failed lines ran on the model the others ran on
                fallback = next(iter(tallies))
            async with await svc.open_bytes(file) as chunks:
                await tally_lines(chunks, tallies, fallback_model=fallback)
        if not tallies:  # nothing ran (a failed validation): the batch is still on record
            tallies[fallback] = ModelTally()
        rows = usage_rows(record, tallies, svc.pricing)
        usage = batch_object_usage(rows)
        if not await svc.store.record_usage(record.id, rows, usage, time.time()):
            return False
        svc.events.usage_recorded(rows)
        return True

    async def _account_parent(self, record: BatchRecord) -> bool:
        """A sharded batch's usage is its children's, each counted once as its own batch
        (at its provider's prices): the parent only sums them, once all are counted."""
        rows: list[UsageRow] = []
        for _, child in await self.service.store.shard_children(record.id):
            child_rows = await self.service.store.usage_rows(child.id)
            if not child_rows:
                return False  # not accounted yet
            rows.extend(child_rows)
        usage = batch_object_usage(rows) if rows else None
        return await self.service.store.record_usage(record.id, [], usage, time.time())

    def _readable(self, record: BatchRecord, file: FileRecord) -> bool:
        """A remote provider's file once the keeper has its copy (or gave up waiting)."""
        provider = self.service.providers.get(file.provider or "")
        if file.blob or provider is None or not provider.remote_files:
            return True
        if not self.service.config.blobs.keep_provider_outputs:
            return True
        ended = record.object.get(f"{record.status}_at")
        ended = ended if isinstance(ended, int) else record.created_at
        return time.time() - ended > KEEP_WAIT_SECONDS
