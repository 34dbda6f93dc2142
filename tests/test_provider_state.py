"""Adapters keep nothing on local disk: a gateway restarted mid-batch carries on from the
store and the blob store alone (local folder or S3), and the folders of state files that
earlier versions wrote are imported once."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from openai.types import Batch

from gateway.config import Config
from tests.conftest import Gateway, StartGateway, s3_client
from tests.fakes.anthropic_upstream import ANTHROPIC, make_anthropic_upstream
from tests.fakes.azure_upstream import make_azure_upstream
from tests.fakes.gemini_upstream import make_gemini_upstream
from tests.fakes.mistral_upstream import make_mistral_upstream
from tests.fakes.openai_upstream import make_openai_upstream
from tests.fakes.together_upstream import make_together_upstream
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal

KEY = "sk-ant-secret-123"
CHAT = "/v1/chat/completions"


def sandbox_config(tmp_path: Path, **overrides: Any) -> Config:
    """The sandbox with its legacy folder at ./sandbox, a batch of 4 lines taking ~0.8 s."""
    sandbox = {"type": "sandbox", "dir": "./sandbox", "validate_seconds": 0}
    sandbox |= {"line_seconds": 0.2, "finalize_seconds": 0, "cancel_seconds": 0}
    return make_config(tmp_path, providers={"sandbox": sandbox}, **overrides)


async def anthropic_config(
    tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> tuple[Config, TestServer]:
    upstream = await aiohttp_server(make_anthropic_upstream(KEY, polls_to_end=3))
    claude = {"type": "anthropic", "base_url": str(upstream.make_url("")), "api_key": KEY}
    claude |= {"default_max_tokens": 64, "dir": "./anthropic", "retry_backoff_seconds": 0}
    config = make_config(tmp_path, providers={"claude": claude}, default="claude")
    return config, upstream


async def submit(gw: Gateway, lines: int) -> Batch:
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(lines))), purpose="batch"
    )
    return await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h"
    )


async def outputs(gw: Gateway, batch: Batch) -> list[str]:
    text = (await gw.client.files.content(batch.output_file_id or "")).text
    return sorted(json.loads(line)["custom_id"] for line in text.splitlines())


def local_files(tmp_path: Path) -> list[str]:
    """Every file the gateway left in its data folder, but the store and the blobs."""
    return sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.is_file() and p.parts[len(tmp_path.parts)] != "files"
        if not p.name.startswith("gateway.db")
    )


async def restart_mid_batch(
    start_gateway: StartGateway, tmp_path: Path, blobs: dict[str, Any]
) -> None:
    config = sandbox_config(tmp_path, blobs=blobs)
    first = await start_gateway(config)
    batch = await submit(first, 4)
    await first.server.close()  # mid-batch: nothing of the run is in this process any more

    second = await start_gateway(config)
    done = await wait_terminal(second.client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 4
    assert await outputs(second, done) == [f"req-{i}" for i in range(4)]
    assert local_files(tmp_path) == []


async def test_sandbox_batch_carries_on_after_a_restart(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    await restart_mid_batch(start_gateway, tmp_path, {"dir": "./files"})
    assert len(list((tmp_path / "files").glob("upstream-file-sbx*"))) == 2  # input + output


async def test_sandbox_keeps_its_files_in_s3(
    start_gateway: StartGateway, tmp_path: Path, s3_blobs: dict[str, Any]
) -> None:
    await restart_mid_batch(start_gateway, tmp_path, s3_blobs)
    assert not (tmp_path / "files").exists()
    async with s3_client(s3_blobs["s3"]) as client:
        listed = await client.list_objects_v2(Bucket=s3_blobs["s3"]["bucket"])
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert sum(k.startswith("files/upstream-file-sbx") for k in keys) == 2


async def test_anthropic_batch_carries_on_after_a_restart(
    start_gateway: StartGateway,
    tmp_path: Path,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    config, upstream = await anthropic_config(tmp_path, aiohttp_server)
    first = await start_gateway(config)
    batch = await submit(first, 3)
    assert (await first.client.batches.retrieve(batch.id)).status == "in_progress"
    await first.server.close()

    second = await start_gateway(config)
    done = await wait_terminal(second.client, batch.id)
    assert done.status == "completed" and await outputs(second, done) == ["req-0", "req-1", "req-2"]
    assert len(upstream.app[ANTHROPIC].batches) == 1
    assert local_files(tmp_path) == []


async def to_legacy(gw: Gateway, provider: str, folder: Path, keys: list[str]) -> None:
    """Move a provider's state and files out of the stores into the folder layout that
    earlier versions kept (`<file>.jsonl` + `<file>.meta.json`, `<batch>.json`)."""
    store, blobs = gw.service.store, gw.service.blobs
    folder.mkdir()
    for key in keys:
        state = await store.get_provider_state(provider, key)
        assert state is not None
        await store.delete_provider_state(provider, key)
        if key.startswith("file-"):
            async with blobs.open(f"upstream-{key}") as chunks:
                data = b"".join([chunk async for chunk in chunks])
            await blobs.delete(f"upstream-{key}")
            (folder / f"{key}.jsonl").write_bytes(data)
            (folder / f"{key}.meta.json").write_text(json.dumps(state))
        else:
            state.pop("result_files", None)  # not known to earlier versions
            (folder / f"{key}.json").write_text(json.dumps(state))
    await store.delete_provider_state(provider, "batches")


async def upstream_ids(gw: Gateway, provider: str, batch: Batch) -> list[str]:
    record = await gw.service.store.get_batch(batch.id)
    file_id = await gw.service.store.get_upstream_file(batch.input_file_id, provider)
    assert record is not None and record.upstream_id is not None and file_id is not None
    return [file_id, record.upstream_id]


async def test_sandbox_state_files_of_earlier_versions_are_imported(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    config = sandbox_config(tmp_path)
    first = await start_gateway(config)
    finished = await wait_terminal(first.client, (await submit(first, 2)).id)
    output = (await first.client.files.content(finished.output_file_id or "")).content
    running = await submit(first, 4)
    assert (await first.client.batches.retrieve(running.id)).status == "in_progress"
    keys = await upstream_ids(first, "sandbox", running)
    keys += await upstream_ids(first, "sandbox", finished)
    finished_state = await first.service.store.get_provider_state("sandbox", keys[-1])
    assert finished_state is not None and finished_state["result"]["error_file_id"] is None
    keys.append(finished_state["result"]["output_file_id"])
    await to_legacy(first, "sandbox", tmp_path / "sandbox", keys)
    await first.server.close()

    second = await start_gateway(config)
    again = await second.client.batches.retrieve(finished.id)
    assert again.model_dump() == finished.model_dump()
    assert (await second.client.files.content(finished.output_file_id or "")).content == output
    done = await wait_terminal(second.client, running.id)
    assert done.status == "completed" and await outputs(second, done) == [
        f"req-{i}" for i in range(4)
    ]
    assert not (tmp_path / "sandbox").exists()
    assert sorted(p.name for p in (tmp_path / "sandbox.imported").iterdir()) == sorted(
        [f"{k}.jsonl" for k in keys if k.startswith("file-")]
        + [f"{k}.meta.json" for k in keys if k.startswith("file-")]
        + [f"{k}.json" for k in keys if k.startswith("batch_")]
    )
    # Found by its tag again: the import rebuilt the sandbox's index.
    tagged = await second.service.providers["sandbox"].tagged_batches(0)
    assert {tag for tag, _ in tagged} == {finished.id, running.id}


async def test_anthropic_state_files_of_earlier_versions_are_imported(
    start_gateway: StartGateway,
    tmp_path: Path,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    config, upstream = await anthropic_config(tmp_path, aiohttp_server)
    first = await start_gateway(config)
    batch = await submit(first, 3)
    keys = await upstream_ids(first, "claude", batch)
    await to_legacy(first, "claude", tmp_path / "anthropic", keys)
    await first.server.close()

    second = await start_gateway(config)
    done = await wait_terminal(second.client, batch.id)
    assert done.status == "completed" and await outputs(second, done) == ["req-0", "req-1", "req-2"]
    assert len(upstream.app[ANTHROPIC].batches) == 1
    assert not (tmp_path / "anthropic").exists() and (tmp_path / "anthropic.imported").is_dir()


def _remote(
    kind: str, upstream: TestServer, key: str, prefix: str = "/v1", **extra: Any
) -> dict[str, Any]:
    base_url = str(upstream.make_url(prefix)).rstrip("/")
    return {"type": kind, "base_url": base_url, "api_key": key, "retry_backoff_seconds": 0} | extra


# Every remote type: (its fake upstream, its provider config on that fake).
REMOTE_TYPES: dict[str, tuple[Callable[[], Any], Callable[[TestServer], dict[str, Any]]]] = {
    "openai": (
        lambda: make_openai_upstream("sk-up-123456"),
        lambda up: _remote("openai", up, "sk-up-123456"),
    ),
    "azure": (
        lambda: make_azure_upstream(api_key="az-key-123456", deployments=frozenset({"dep"})),
        lambda up: _remote("azure", up, "az-key-123456", "", deployments={"gpt-4o-mini": "dep"}),
    ),
    "gemini": (
        lambda: make_gemini_upstream("AIza-test-key-123456", polls_to_end=2),
        lambda up: _remote("gemini", up, "AIza-test-key-123456", ""),
    ),
    "mistral": (
        lambda: make_mistral_upstream("mistral-key-123456"),
        lambda up: _remote("mistral", up, "mistral-key-123456"),
    ),
    "together": (
        lambda: make_together_upstream("tg-key-123456"),
        lambda up: _remote("together", up, "tg-key-123456"),
    ),
}


@pytest.mark.parametrize("kind", sorted(REMOTE_TYPES))
async def test_every_remote_type_carries_on_after_a_restart(
    start_gateway: StartGateway,
    tmp_path: Path,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    kind: str,
) -> None:
    """Whatever an adapter remembers about a batch (Gemini's file model, Mistral's job
    group, Together's line count, ...) is in the store: a new process on the same store
    and blobs finishes the batch, and nothing was written outside them."""
    fake, settings = REMOTE_TYPES[kind]
    upstream = await aiohttp_server(fake())
    config = make_config(tmp_path, providers={kind: settings(upstream)}, default=kind)
    first = await start_gateway(config)
    batch = await submit(first, 3)
    seen = await first.client.batches.retrieve(batch.id)
    assert seen.status in ("validating", "in_progress")
    await first.server.close()

    second = await start_gateway(config)
    done = await wait_terminal(second.client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.total == 3
    assert await outputs(second, done) == [f"req-{i}" for i in range(3)]
    assert local_files(tmp_path) == []
