"""Shard and heal: one client batch run as children at two OpenAI-style fakes, failed
lines re-run elsewhere, one merged result; under cancels, restarts and lost answers."""

from __future__ import annotations

import asyncio
import io
import json
import zlib
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from gateway.blobs import LocalBlobs
from gateway.config import HEAL_CODES, ConfigError, parse_config
from gateway.retention import Retention
from gateway.shard_files import (
    ChildFiles,
    Merger,
    children_for,
    failed_ids,
    heal_matches,
    select_lines,
    split_input,
)
from gateway.shard_plan import spread
from gateway.store import BatchRecord, FileRecord
from gateway.store.base import ShardRow
from providers.results import CANCELLED, EXPIRED
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.support import chat_line, jsonl, make_config, read_lines

KEY = "sk-shard-upstream-1"
TERMINAL = ("completed", "failed", "expired", "cancelled")
Env = tuple[Gateway, FakeOpenAIState, FakeOpenAIState]


def provider(server: TestServer, **options: Any) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": str(server.make_url("/v1")),
        "api_key": KEY,
        "retry_backoff_seconds": 0,
        **options,
    }


@pytest.fixture
async def start_env(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> Callable[..., Awaitable[Env]]:
    """Two fakes, `alpha` and `beta`, and a gateway whose only route shards across
    `across` (healing on `heal_on` when given)."""

    async def start(
        *,
        across: tuple[str, ...] = ("alpha", "beta"),
        heal_on: tuple[str, ...] = (),
        heal: dict[str, Any] | None = None,
        shard: dict[str, Any] | None = None,
        alpha: dict[str, Any] | None = None,
        beta: dict[str, Any] | None = None,
        interval: float = 0.05,
        **gateway: Any,
    ) -> Env:
        a = await aiohttp_server(make_openai_upstream(KEY, **(alpha or {})))
        b = await aiohttp_server(make_openai_upstream(KEY, **(beta or {})))
        route: dict[str, Any] = {"match": {}, "shard": {"across": list(across), **(shard or {})}}
        if heal_on:
            route["heal"] = {"retry_failed_lines_on": list(heal_on), **(heal or {})}
        config = make_config(
            tmp_path,
            providers={"alpha": provider(a), "beta": provider(b)},
            default="alpha",
            routes=[route],
            poller={"interval_seconds": interval, "webhook_interval_seconds": 0.05},
            **gateway,
        )
        gw = await start_gateway(config)
        return gw, a.app[UPSTREAM], b.app[UPSTREAM]

    return start


async def create(gw: Gateway, lines: list[Any]) -> Any:
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    return await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def finished(gw: Gateway, batch_id: str, seconds: float = 120) -> Any:
    for _ in range(int(seconds / 0.05)):
        batch = await gw.client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"{batch_id} still {batch.status}")


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def upstream_batches(*states: FakeOpenAIState) -> list[dict[str, Any]]:
    return [b for s in states for b in s.batches.values() if "_lines" in b or b.get("status")]


def sent_ids(state: FakeOpenAIState) -> list[list[str]]:
    """The custom_ids of each batch a fake was given, in creation order."""
    out = []
    for batch in state.batches.values():
        content = state.files[batch["input_file_id"]]["_content"]
        out.append([json.loads(x)["custom_id"] for x in content.splitlines() if x.strip()])
    return out


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def fails_at_rate(custom_id: str, rate: float) -> bool:
    """The fake's `server_error_rate` choice (a hash of the custom_id)."""
    return zlib.crc32(custom_id.encode()) % 10_000 < rate * 10_000


async def test_a_batch_over_the_limits_runs_as_three_children_and_one_merged_output(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    gw, alpha, beta = await start_env()
    n = 120_000
    batch = await create(gw, [chat_line(i) for i in range(n)])
    assert batch.status == "validating"
    done = await finished(gw, batch.id, 240)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": n, "completed": n, "failed": 0}
    assert done.error_file_id is None and done.in_progress_at and done.completed_at
    sizes = [len(ids) for ids in sent_ids(alpha) + sent_ids(beta)]
    assert sorted(sizes) == [40_000, 40_000, 40_000]  # three children, each under 50,000
    assert (len(alpha.batches), len(beta.batches)) == (2, 1)  # spread by weight
    out = await read_lines(gw.client, done.output_file_id)  # asserts each custom_id once
    assert set(out) == {f"req-{i}" for i in range(n)}
    assert all(row["response"]["status_code"] == 200 for row in out.values())
    # One batch and its two files are all the tenant sees; the children are the gateway's.
    assert [b.id for b in (await gw.client.batches.list()).data] == [batch.id]
    files = {f.id for f in (await gw.client.files.list()).data}
    assert files == {batch.input_file_id, done.output_file_id}
    for _, child in await gw.service.store.shard_children(batch.id):
        with pytest.raises(openai.NotFoundError):
            await gw.client.batches.retrieve(child.id)


async def test_lines_a_provider_fails_with_500s_are_healed_on_another(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    gw, alpha, beta = await start_env(
        across=("alpha",), heal_on=("beta",), alpha={"server_error_rate": 0.1}
    )
    n = 2_000
    failing = {f"req-{i}" for i in range(n) if fails_at_rate(f"req-{i}", 0.1)}
    assert 150 < len(failing) < 250
    before = metric("gateway_healed_lines_total", from_provider="alpha", to_provider="beta")
    batch = await create(gw, [chat_line(i) for i in range(n)])
    done = await finished(gw, batch.id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": n, "completed": n, "failed": 0}
    assert done.error_file_id is None  # every failed line was healed
    out = await read_lines(gw.client, done.output_file_id)
    assert set(out) == {f"req-{i}" for i in range(n)}
    assert all(row["response"]["status_code"] == 200 for row in out.values())
    # beta got exactly the lines alpha failed, once.
    assert [set(ids) for ids in sent_ids(beta)] == [failing]
    healed = metric("gateway_healed_lines_total", from_provider="alpha", to_provider="beta")
    assert healed - before == len(failing)


async def test_lines_that_fail_everywhere_are_the_only_error_lines(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    # Both fakes fail the same lines (the same hash): healing can't save them.
    gw, alpha, beta = await start_env(
        across=("alpha",),
        heal_on=("beta",),
        alpha={"server_error_rate": 0.1},
        beta={"server_error_rate": 0.1},
    )
    n = 1_000
    failing = {f"req-{i}" for i in range(n) if fails_at_rate(f"req-{i}", 0.1)}
    before = metric("gateway_shard_failed_lines_total")
    done = await finished(gw, (await create(gw, [chat_line(i) for i in range(n)])).id)
    assert done.status == "completed"
    counts = done.request_counts
    assert (counts.completed, counts.failed) == (n - len(failing), len(failing))
    out = await read_lines(gw.client, done.output_file_id)
    errors = await read_lines(gw.client, done.error_file_id)
    assert set(errors) == failing and not set(out) & failing
    assert len(out) + len(errors) == n
    assert all(row["response"]["status_code"] == 500 for row in errors.values())
    assert len(beta.batches) == 1  # max_attempts 2: one heal, then the lines stay failed
    assert metric("gateway_shard_failed_lines_total") - before == len(failing)


async def test_a_child_the_provider_expires_is_healed_elsewhere(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    gw, alpha, beta = await start_env(
        across=("alpha",), heal_on=("beta",), alpha={"expire_after": 300}
    )
    done = await finished(gw, (await create(gw, [chat_line(i) for i in range(1_000)])).id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 1000, "completed": 1000, "failed": 0}
    assert [len(ids) for ids in sent_ids(beta)] == [700]
    assert len(await read_lines(gw.client, done.output_file_id)) == 1_000


async def test_an_expired_child_without_heal_leaves_its_lines_expired(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    gw, alpha, beta = await start_env(across=("alpha",), alpha={"expire_after": 30})
    done = await finished(gw, (await create(gw, [chat_line(i) for i in range(100)])).id)
    assert done.status == "expired" and done.expired_at
    errors = await read_lines(gw.client, done.error_file_id)
    assert len(errors) == 70 and {e["error"]["code"] for e in errors.values()} == {"batch_expired"}
    assert len(await read_lines(gw.client, done.output_file_id)) == 30


async def test_cancel_midway_cancels_every_child(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    gw, alpha, beta = await start_env(
        shard={"max_lines": 50}, alpha={"hold": True}, beta={"hold": True}
    )
    batch = await create(gw, [chat_line(i) for i in range(150)])

    async def running() -> bool:
        b = await gw.client.batches.retrieve(batch.id)
        children = await gw.service.store.shard_children(batch.id)
        return b.status == "in_progress" and all(c.status == "in_progress" for _, c in children)

    await until(running)
    cancelling = await gw.client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = await finished(gw, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert {b["status"] for b in upstream_batches(alpha, beta)} == {"cancelled"}
    assert len(upstream_batches(alpha, beta)) == 3
    errors = await read_lines(gw.client, done.error_file_id)
    assert len(errors) == 150
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    assert done.output_file_id is None
    with pytest.raises(openai.BadRequestError):
        await gw.client.batches.cancel(batch.id)


async def test_partial_output_while_children_still_run(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    gw, alpha, beta = await start_env(shard={"max_lines": 50}, beta={"hold": True})
    batch = await create(gw, [chat_line(i) for i in range(100)])

    async def partial() -> bool:
        b = await gw.client.batches.retrieve(batch.id)
        return b.output_file_id is not None

    await until(partial)
    running = await gw.client.batches.retrieve(batch.id)
    assert running.status == "in_progress"
    assert running.request_counts.completed == 50
    url = gw.url(f"/v1/files/{running.output_file_id}/content")
    async with gw.http.get(url, headers={"Authorization": "Bearer test-key"}) as resp:
        assert resp.status == 200 and resp.headers["X-Gateway-Partial"] == "true"
        lines = [json.loads(x) for x in (await resp.read()).splitlines()]
    assert len(lines) == 50 and len({x["custom_id"] for x in lines}) == 50
    beta.hold = False
    done = await finished(gw, batch.id)
    assert done.status == "completed" and done.output_file_id == running.output_file_id
    async with gw.http.get(url, headers={"Authorization": "Bearer test-key"}) as resp:
        assert "X-Gateway-Partial" not in resp.headers
        assert len((await resp.read()).splitlines()) == 100


async def test_a_restart_midway_carries_on_with_the_same_children(
    start_env: Callable[..., Awaitable[Env]], start_gateway: StartGateway
) -> None:
    gw, alpha, beta = await start_env(
        shard={"max_lines": 40}, alpha={"hold": True}, beta={"hold": True}
    )
    batch = await create(gw, [chat_line(i) for i in range(120)])

    async def all_created() -> bool:
        children = await gw.service.store.shard_children(batch.id)
        return len(children) == 3 and all(c.upstream_id for _, c in children)

    await until(all_created)
    await gw.server.close()
    alpha.hold = beta.hold = False
    again = await start_gateway(gw.config)
    done = await finished(again, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 120
    assert len(upstream_batches(alpha, beta)) == 3  # nothing made twice
    assert len(await read_lines(again.client, done.output_file_id)) == 120


async def test_lost_create_answers_make_each_child_exactly_once(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    # Each create is carried out, then its connection dropped: the gateway finds the
    # children by tag instead of making them again.
    faults = {"fail_on": "POST /v1/batches", "fail_next": ["reset_after"] * 2}
    gw, alpha, beta = await start_env(shard={"max_lines": 30}, alpha=faults, beta=dict(faults))
    done = await finished(gw, (await create(gw, [chat_line(i) for i in range(90)])).id)
    assert done.status == "completed" and done.request_counts.completed == 90
    assert len(upstream_batches(alpha, beta)) == 3


async def test_a_child_whose_create_broke_off_is_created_once_by_the_settler(
    start_env: Callable[..., Awaitable[Env]], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, alpha, beta = await start_env(shard={"max_lines": 30})
    service = gw.service
    original = service._create_at
    broke = []

    async def once_broken(*args: Any, **kwargs: Any) -> Any:
        if not broke:
            broke.append(1)
            raise RuntimeError("the process stopped here")
        return await original(*args, **kwargs)

    monkeypatch.setattr(service, "_create_at", once_broken)
    done = await finished(gw, (await create(gw, [chat_line(i) for i in range(60)])).id)
    assert broke and done.status == "completed" and done.request_counts.completed == 60
    assert len(upstream_batches(alpha, beta)) == 2


async def accounted_batch(
    start_env: Callable[..., Awaitable[Env]],
) -> tuple[Env, Any, list[tuple[ShardRow, BatchRecord]]]:
    """A 100-line batch in four children at alpha and beta, completed and accounted."""
    env = await start_env(shard={"max_lines": 25}, usage={"sweep_seconds": 0.05})
    gw = env[0]
    batch = await create(gw, [chat_line(i) for i in range(100)])
    done = await finished(gw, batch.id)
    assert done.status == "completed"

    async def accounted() -> bool:
        return (await gw.client.batches.retrieve(batch.id)).usage is not None

    await until(accounted)
    return env, done, await gw.service.store.shard_children(batch.id)


async def test_each_child_is_accounted_once_and_the_parent_sums_them(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    (gw, _, _), batch, children = await accounted_batch(start_env)
    store = gw.service.store
    rows = [r for _, c in children for r in await store.usage_rows(c.id)]
    assert {r.provider for r in rows} == {"alpha", "beta"}
    assert sum(r.lines_succeeded for r in rows) == 100
    assert await store.usage_rows(batch.id) == []  # the parent adds no row of its own
    usage = (await gw.client.batches.retrieve(batch.id)).usage
    assert usage is not None and usage.input_tokens == sum(r.prompt_tokens for r in rows) == 1000


async def test_a_create_too_large_for_a_route_that_does_not_shard_is_refused(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    sandbox = {"type": "sandbox", "validate_seconds": 0, "line_seconds": 0}
    config = make_config(
        tmp_path,
        providers={"small": sandbox, "big": dict(sandbox)},
        default="small",
        limits={"max_file_lines": 10, "max_shard_file_lines": 40},
        routes=[{"match": {"metadata": {"size": "big"}}, "shard": {"across": ["big"]}}],
    )
    gw = await start_gateway(config)
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(20)]))), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError) as refused:
        await gw.client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert refused.value.code == "file_too_large" and "shard" in refused.value.message
    assert (await gw.client.batches.list()).data == []
    sharded = await gw.client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"size": "big"},
    )
    assert sharded.status == "validating"
    with pytest.raises(openai.APIStatusError) as too_big:  # over the shard cap too
        await gw.client.files.create(
            file=("in.jsonl", io.BytesIO(jsonl([chat_line(i) for i in range(41)]))),
            purpose="batch",
        )
    assert too_big.value.status_code == 400


def test_shard_config_names_known_providers_only(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "store": {"url": "sqlite:///./g.db"},
        "blobs": {"dir": "./f"},
        "providers": {"a": {"type": "sandbox"}},
        "default": "a",
    }
    with pytest.raises(ConfigError, match=r"routes.0.shard.across.1: unknown provider 'b'"):
        parse_config({**base, "routes": [{"shard": {"across": ["a", "b"]}}]}, tmp_path)
    with pytest.raises(ConfigError, match="retry_failed_lines_on.0: unknown provider 'z'"):
        route = {"shard": {"across": ["a"]}, "heal": {"retry_failed_lines_on": ["z"]}}
        parse_config({**base, "routes": [route]}, tmp_path)
    with pytest.raises(ConfigError, match="needs `shard:`"):
        parse_config(
            {**base, "routes": [{"to": "a", "heal": {"retry_failed_lines_on": ["a"]}}]}, tmp_path
        )
    with pytest.raises(ConfigError, match="reserved"):
        parse_config(
            {**base, "providers": {"a": {"type": "sandbox"}, "shard": {"type": "sandbox"}}},
            tmp_path,
        )
    ok = parse_config({**base, "routes": [{"shard": {"across": ["a"]}}]}, tmp_path)
    assert ok.upload_limits() == (1024**3, 500_000, 500_000)


def test_children_are_spread_by_weight() -> None:
    assert spread(3, [("a", 1), ("b", 1)]) == ["a", "b", "a"]
    assert spread(8, [("a", 3), ("b", 1)]).count("a") == 6
    assert spread(4, [("a", 1), ("b", 1), ("c", 2)]) == ["c", "a", "b", "c"]
    assert children_for(120_000, 10, 50_000, 10**9) == 3
    assert children_for(10, 600, 50_000, 200) == 3  # bytes decide
    assert children_for(0, 0, 5, 5) == 1


@pytest.mark.parametrize(
    ("line", "codes", "heals"),
    [
        ({"response": {"status_code": 500}, "error": None}, HEAL_CODES, True),
        ({"response": {"status_code": 400}, "error": None}, HEAL_CODES, False),
        ({"response": {"status_code": 504}, "error": None}, ("timeout",), True),
        ({"response": None, "error": {"code": "batch_expired"}}, HEAL_CODES, True),
        ({"response": None, "error": {"code": "request_timeout"}}, HEAL_CODES, True),
        ({"response": None, "error": {"code": "batch_cancelled"}}, HEAL_CODES, False),
        (
            {"response": None, "error": {"code": "batch_failed"}},
            (*HEAL_CODES, "batch_failed"),
            True,
        ),
        ({"response": {"status_code": 429}, "error": None}, (500,), False),
    ],
)
def test_which_failed_lines_a_heal_reruns(
    line: dict[str, Any], codes: tuple[int | str, ...], heals: bool
) -> None:
    assert heal_matches(line, codes) is heals


def _opener(blobs: LocalBlobs, key: str) -> Any:
    return partial(blobs.open, key)


async def _blob(blobs: LocalBlobs, key: str, lines: list[dict[str, Any]]) -> str:
    writer = blobs.writer(key)
    await writer.write(jsonl(lines))
    await writer.commit()
    return key


def _ok(cid: str) -> dict[str, Any]:
    response = {"status_code": 200, "request_id": "req_1", "body": {"id": cid}}
    return {"id": "batch_req_1", "custom_id": cid, "response": response, "error": None}


def _failed(cid: str, status: int) -> dict[str, Any]:
    response = {"status_code": status, "request_id": "req_1", "body": {"error": {}}}
    return {"id": "batch_req_1", "custom_id": cid, "response": response, "error": None}


async def test_a_split_and_a_merge_give_every_custom_id_exactly_once(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    source = await _blob(blobs, "in", [chat_line(i) for i in range(10)])
    slices = await split_input(
        _opener(blobs, source),
        lambda i: blobs.writer(f"c{i}"),
        lines=10,
        size=10**6,
        max_lines=4,
        max_bytes=10**6,
    )
    assert [s.lines for s in slices] == [4, 4, 2]
    assert [s.models for s in slices] == [{"gpt-4o-mini"}] * 3
    # Child 0: req-0 ok (twice: a provider's duplicate), req-1 a 500, req-2 a 400, req-3 no
    # result (expired). A heal re-ran req-1 and req-3.
    out0 = await _blob(blobs, "o0", [_ok("req-0"), _ok("req-0")])
    err0 = await _blob(blobs, "e0", [_failed("req-1", 500), _failed("req-2", 400)])
    child0 = ChildFiles(_opener(blobs, "c0"), _opener(blobs, out0), _opener(blobs, err0), EXPIRED)
    wanted, failed = await failed_ids(child0, HEAL_CODES)
    assert wanted == {"req-1", "req-3"} and failed == 3
    heal = blobs.writer("h0")
    picked = await select_lines(_opener(blobs, "c0"), wanted, heal)
    assert picked.lines == 2
    healed = await _blob(blobs, "ho", [_ok("req-1")])
    heal_child = ChildFiles(_opener(blobs, "h0"), _opener(blobs, healed), None, EXPIRED)
    rest = [ChildFiles(_opener(blobs, f"c{i}"), None, None, CANCELLED) for i in (1, 2)]
    merged_out, merged_err = blobs.writer("mo"), blobs.writer("me")
    merger = Merger(merged_out, merged_err, "batch_p", "file-e")
    assert await merger.add(child0, {"req-1", "req-3"}) == 1
    assert await merger.add(heal_child) == 1
    for child in rest:
        assert await merger.add(child) == 0
    await merger.finish()
    await merged_out.commit()
    await merged_err.commit()
    outs = [json.loads(x) for x in (tmp_path / "mo").read_bytes().splitlines()]
    errs = [json.loads(x) for x in (tmp_path / "me").read_bytes().splitlines()]
    assert [o["custom_id"] for o in outs] == ["req-0", "req-1"]
    assert {e["custom_id"]: (e["error"] or {}).get("code") for e in errs} == {
        "req-2": None,  # the 400 stays as the provider answered it
        "req-3": "batch_expired",  # re-run, but the heal had no result for it either
        **{f"req-{i}": "batch_cancelled" for i in range(4, 10)},
    }
    assert (merger.completed, merger.failed, merger.expired) == (2, 8, 1)
    assert merger.output_bytes == (tmp_path / "mo").stat().st_size


async def test_children_rows_are_inserted_once_in_one_transaction(store: Any) -> None:
    now = 1_800_000_000

    def child(n: int, heals: str | None = None) -> tuple[FileRecord, BatchRecord, ShardRow]:
        file = FileRecord(
            id=f"file-c{n:023d}",
            tenant="t",
            purpose="batch",
            filename="x",
            bytes=1,
            created_at=now,
            blob=f"b{n}",
            batch_id=f"batch_c{n:023d}",
        )
        batch = BatchRecord(
            id=f"batch_c{n:023d}",
            tenant="t",
            provider="p",
            input_file_id=file.id,
            created_at=now,
            object={"status": "validating"},
            parent_id="batch_parent",
        )
        return file, batch, ShardRow(batch.id, "batch_parent", n, 2 if heals else 1, 5, heals)

    first = [child(0), child(1)]
    assert await store.add_children(*zip(*first, strict=True))
    assert not await store.add_children(*zip(*first, strict=True))  # a split redone
    heal = child(2, heals="batch_c" + "0" * 23)
    assert await store.add_children([heal[0]], [heal[1]], [heal[2]])
    rival = child(3, heals="batch_c" + "0" * 23)  # a second heal of the same child
    assert not await store.add_children([rival[0]], [rival[1]], [rival[2]])
    assert await store.get_batch(rival[1].id) is None and await store.get_file(rival[0].id) is None
    await store.mark_examined("batch_c" + "0" * 23)
    rows = await store.shard_children("batch_parent")
    assert [(r.position, r.attempt, r.examined) for r, _ in rows] == [
        (0, 1, True),
        (1, 1, False),
        (2, 2, False),
    ]
    assert all(b.parent_id == "batch_parent" for _, b in rows)
    # Children and their files are not the tenant's to list or read.
    assert (await store.list_batches("t", after=None, limit=10)).data == []
    assert await store.get_batch(rows[0][1].id, "t") is None
    files = await store.list_files("t", purpose=None, after=None, limit=10, order="desc")
    assert files.data == []
    assert await store.count_active_batches("t") == 0


async def test_advances_racing_on_one_batch_make_each_child_and_each_heal_once(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    # Three advances at once, besides the poller's (as replicas whose leases ran out would).
    gw, alpha, beta = await start_env(
        shard={"max_lines": 40}, heal_on=("beta",), alpha={"server_error_rate": 0.1}
    )
    batch = await create(gw, [chat_line(i) for i in range(120)])
    store = gw.service.store
    for _ in range(40):
        record = await store.get_batch(batch.id)
        assert record is not None
        await asyncio.gather(*(gw.service.advance_shard(record) for _ in range(3)))
        if record.status in TERMINAL:
            break
    done = await finished(gw, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 120
    children = await store.shard_children(batch.id)
    assert len({c.id for _, c in children}) == len(children)
    assert len(upstream_batches(alpha, beta)) == len(children)
    assert sum(1 for r, _ in children if r.heals) == sum(
        1 for r, c in children if c.provider == "alpha"
    )
    assert len(await read_lines(gw.client, done.output_file_id)) == 120


async def test_the_childrens_files_go_once_the_batch_is_merged_and_accounted(
    start_env: Callable[..., Awaitable[Env]],
) -> None:
    (gw, alpha, beta), done, children = await accounted_batch(start_env)
    store = gw.service.store
    child_files = [c.input_file_id for _, c in children] + [
        c.object[k] for _, c in children for k in ("output_file_id", "error_file_id") if c.object[k]
    ]
    assert len(child_files) == 8

    async def released() -> bool:
        # The housekeeping's rounds: the kept results' provider copies are queued for
        # deletion there, then the children's files expire and go.
        await Retention(gw.service).run_once()
        await gw.service.sweep_expired()
        return all([await store.get_file(f) is None for f in child_files])

    await until(released)
    blobs = {p.name for p in Path(gw.config.blobs.dir or "").rglob("*") if p.is_file()}
    assert not blobs & set(child_files)
    assert len(await read_lines(gw.client, done.output_file_id)) == 100  # the merged copy stays
    assert await store.get_file(done.input_file_id) is not None
    # Nothing of the children is left at the providers either (inputs and results).
    assert [f for s in (alpha, beta) for f in s.files.values()] == []


async def test_an_embeddings_batch_is_cut_by_its_inputs_too(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    # 120 lines of 1,000 inputs each: few lines, but 120,000 inputs, over the 50,000 one
    # batch may hold; the upload is allowed because a route shards.
    sandbox = {"type": "sandbox", "validate_seconds": 0, "line_seconds": 0}
    config = make_config(
        tmp_path,
        providers={"a": sandbox, "b": dict(sandbox)},
        default="a",
        routes=[{"match": {}, "shard": {"across": ["a", "b"]}}],
        poller={"interval_seconds": 0.05},
    )
    gw = await start_gateway(config)
    lines = [
        {
            "custom_id": f"emb-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {
                "model": "text-embedding-3-small",
                "input": [f"t{i}-{j}" for j in range(1000)],
            },
        }
        for i in range(120)
    ]
    uploaded = await gw.client.files.create(
        file=("e.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    batch = await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = await finished(gw, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 120
    children = await gw.service.store.shard_children(batch.id)
    assert [r.lines for r, _ in children] == [50, 50, 20]
    out = await read_lines(gw.client, done.output_file_id)
    assert set(out) == {f"emb-{i}" for i in range(120)}
