"""The emulated provider keeps nothing on local disk: a batch's state lives in the state
store and its results in part blobs, so a new process (or another replica) carries on
from there, and the folder an earlier version kept is imported once."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import secrets
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.blobs import LocalBlobs
from gateway.config import Config
from providers.base import BatchRequest, InputFile, UpstreamBatch
from providers.emulated import EmulatedProvider
from providers.registry import build_provider
from providers.results import response_line
from tests import test_emulated_provider
from tests.fakes.sync_upstream import FakeSyncState
from tests.support import MemoryState, adapter_for, chat_line, jsonl
from tests.test_emulated_provider import CHAT, MakeUpstream, emulated_config

ALL = [f"req-{i}" for i in range(10)]
make_upstream = test_emulated_provider.make_upstream  # the fake synchronous server, as there


def upload(tmp_path: Path, n: int = 10) -> InputFile:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_line(i) for i in range(n)]))
    return InputFile(source, "in.jsonl", source.stat().st_size, n, CHAT, ("gpt-4o-mini",))


def adapter(config: Config, blobs: Path, state: MemoryState, **limits: Any) -> EmulatedProvider:
    """The adapter as the gateway builds it, with quicker flushes when asked."""
    built: EmulatedProvider = adapter_for("local", config, blobs, state)
    built.limits = dataclasses.replace(built.limits, **limits)
    return built


def replica_of(store: MemoryState, *held: str) -> MemoryState:
    """The same store seen from another process, for which the `held` keys are leased by
    the first."""
    other = MemoryState()
    other.states = store.states
    other.held_elsewhere = set(held)
    return other


async def scene(
    make_upstream: MakeUpstream, tmp_path: Path, **upstream: Any
) -> tuple[FakeSyncState, Config, MemoryState, Path]:
    """A fake upstream taking one request at a time, and an empty store and blob folder."""
    server, served = await make_upstream(**upstream)
    config = emulated_config(tmp_path, server, concurrency=1)
    return served, config, MemoryState(), tmp_path / "blobs"


async def start(provider: EmulatedProvider, tmp_path: Path, n: int = 10) -> UpstreamBatch:
    file_id = await provider.upload_file(upload(tmp_path, n))
    return await provider.create_batch(BatchRequest(input_file_id=file_id, endpoint=CHAT))


async def until(provider: EmulatedProvider, batch_id: str, done: Any) -> UpstreamBatch:
    for _ in range(500):
        batch = await provider.get_batch(batch_id)
        if done(batch):
            return batch
        await asyncio.sleep(0.01)
    raise AssertionError(f"batch {batch_id} stuck at {batch}")


def completed_at_least(n: int) -> Any:
    return lambda b: b.request_counts is not None and b.request_counts.completed >= n


async def custom_ids(provider: EmulatedProvider, file_id: str | None) -> list[str]:
    assert file_id is not None
    async with provider.open_file_content(file_id) as chunks:
        data = b"".join([c async for c in chunks])
    return [json.loads(x)["custom_id"] for x in data.splitlines()]


def part_ids(state: dict[str, Any], blobs: Path) -> set[str]:
    """The custom_ids in the committed parts a saved state names."""
    found = set()
    for part in state["parts"]:
        for key in filter(None, part):
            found |= {json.loads(x)["custom_id"] for x in (blobs / key).read_bytes().splitlines()}
    return found


async def test_crash_resends_only_lines_not_yet_in_a_committed_part(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    served, config, store, blobs = await scene(make_upstream, tmp_path, latency=0.03)
    first = adapter(config, blobs, store, flush_lines=3, flush_seconds=30)
    batch = await start(first, tmp_path)
    await until(first, batch.id, completed_at_least(5))
    # What a crash leaves: the store and the blobs as they are at this instant (no await
    # in between, so nothing is half-done), then the process is gone.
    crashed_state = MemoryState()
    crashed_state.states = copy.deepcopy(store.states)
    crashed_blobs = tmp_path / "crashed"
    shutil.copytree(blobs, crashed_blobs)
    first.shutdown_grace_seconds = 0
    await first.close()
    committed = part_ids(crashed_state.states[batch.id][0], crashed_blobs)
    assert len(committed) == 3  # one part of three lines; the next ones were still pending

    sent_before = len(served.served)
    second = adapter(config, crashed_blobs, crashed_state)
    done = await until(second, batch.id, lambda b: b.terminal)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (10, 0)
    resent = {f"req-{t.removeprefix('question ')}" for t in served.served[sent_before:]}
    assert not resent & committed, "a line of a committed part was sent again"
    assert resent == set(ALL) - committed
    assert Counter(await custom_ids(second, done.output_file_id)) == Counter(ALL)
    saved, active = crashed_state.states[batch.id]
    assert not active and "parts" not in saved
    assert not list(crashed_blobs.glob("*.part-*")), "parts are deleted once published"
    await second.close()


async def test_another_replica_answers_from_state_and_passes_a_cancel_on(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    served, config, store, blobs = await scene(make_upstream, tmp_path, latency=0.03)
    runner = adapter(config, blobs, store, flush_lines=2, flush_seconds=30)
    runner.renew_seconds = 0.05
    batch = await start(runner, tmp_path, 30)
    await until(runner, batch.id, completed_at_least(4))

    other = adapter(config, blobs, replica_of(store, batch.id))
    seen = await other.get_batch(batch.id)
    assert not other._runs, "the other replica must not run a batch leased elsewhere"
    assert seen.status == "in_progress" and seen.request_counts is not None
    saved = store.states[batch.id][0]["progress"]
    assert seen.request_counts.completed == saved["completed"] >= 4  # as of the last flush
    assert seen.request_counts.completed % 2 == 0  # flushed two lines at a time

    cancelling = await other.cancel_batch(batch.id)
    assert cancelling.status == "cancelling"
    done = await until(other, batch.id, lambda b: b.terminal)  # the runner stops and ends it
    assert done.status == "cancelled" and done.request_counts is not None
    counts = done.request_counts
    assert counts.completed + counts.failed == 30 and counts.failed > 0
    assert counts.completed == len(served.served) < 30
    errors = await custom_ids(other, done.error_file_id)
    assert sorted(errors + await custom_ids(other, done.output_file_id)) == sorted(
        f"req-{i}" for i in range(30)
    )
    assert f"{batch.id}.cancel" not in store.states
    await other.close()
    await runner.close()


async def test_cancel_of_a_batch_nobody_runs_finishes_it_here(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    served, config, store, blobs = await scene(make_upstream, tmp_path, latency=0.03)
    first = adapter(config, blobs, store, flush_lines=1)
    batch = await start(first, tmp_path)
    await until(first, batch.id, completed_at_least(2))
    store.held_elsewhere.add(batch.id)  # a second process starts while the first runs it
    second = adapter(config, blobs, store)
    await second.get_batch(batch.id)
    assert not second._runs
    first.shutdown_grace_seconds = 0
    await first.close()  # the first process goes away
    sent = len(served.served)
    store.held_elsewhere.clear()

    await second.cancel_batch(batch.id)
    done = await until(second, batch.id, lambda b: b.terminal)
    assert done.status == "cancelled" and done.request_counts is not None
    assert done.request_counts.completed >= 2
    assert len(served.served) == sent  # cancelled before anything more was sent
    errors = await custom_ids(second, done.error_file_id)
    assert errors and set(errors).isdisjoint(await custom_ids(second, done.output_file_id))
    await second.close()


def _legacy_line(batch_id: str, i: int) -> dict[str, Any]:
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    return response_line(f"batch_req_{batch_id}{i}", f"req-{i}", 200, f"req_{i}", body)


def write_legacy_folder(folder: Path, n: int, spool: str) -> tuple[str, str, str]:
    """What the previous version left: an input file, a batch half done (an append-only
    output file with a torn last line, in place or as `<batch>.output.part`) and a
    finished batch with its output file."""
    folder.mkdir()

    def new(prefix: str) -> str:
        return f"{prefix}{secrets.token_hex(12)}"

    def publish(file_id: str, data: bytes, filename: str) -> None:
        (folder / f"{file_id}.jsonl").write_bytes(data)
        meta = {"id": file_id, "filename": filename, "bytes": len(data), "created_at": 1}
        (folder / f"{file_id}.meta.json").write_text(json.dumps(meta))

    input_id = new("file-emu")
    publish(input_id, jsonl([chat_line(i) for i in range(n)]), "in.jsonl")
    running, ended = new("batch_emu"), new("batch_emu")
    out_id, err_id, ended_out = new("file-emu"), new("file-emu"), new("file-emu")
    spooled = jsonl([_legacy_line(running, i) for i in range(3)]) + b'{"id": "batch_req_torn'
    spool_name = f"{out_id}.jsonl" if spool == "in_place" else f"{running}.output.part"
    (folder / spool_name).write_bytes(spooled)
    publish(ended_out, jsonl([_legacy_line(ended, i) for i in range(n)]), "done_output.jsonl")
    base = {
        "input_file_id": input_id,
        "endpoint": CHAT,
        "line_count": n,
        "model": "gpt-4o-mini",
        "created": time.time(),
        "expires_at": int(time.time()) + 86_400,
        "in_progress_at": int(time.time()),
        "finalizing_at": None,
        "cancelling_at": None,
    }
    states = {
        running: base | {"status": "in_progress", "result_files": [out_id, err_id]},
        ended: base
        | {
            "status": "completed",
            "result_files": [ended_out, new("file-emu")],
            "completed_at": int(time.time()),
        },
    }
    states[running]["result"] = None
    states[ended]["result"] = {
        "output_file_id": ended_out,
        "error_file_id": None,
        "completed": n,
        "failed": 0,
        "usage": None,
    }
    for batch_id, state in states.items():
        (folder / f"{batch_id}.json").write_text(json.dumps({"id": batch_id} | state))
    return running, ended, ended_out


@pytest.mark.parametrize("spool", ["in_place", "part_file"])
async def test_legacy_folder_is_imported_and_its_running_batch_resumed(
    make_upstream: MakeUpstream, tmp_path: Path, spool: str
) -> None:
    served, config, store, blobs = await scene(make_upstream, tmp_path)
    legacy = tmp_path / "emulated"  # the config's `dir`
    running, ended, ended_out = write_legacy_folder(legacy, 8, spool)

    provider = adapter(config, blobs, store)
    done = await until(provider, running, lambda b: b.terminal)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (8, 0)
    # The three lines the old spool held were not sent again; the torn one was.
    assert sorted(served.served) == sorted(f"question {i}" for i in range(3, 8))
    assert Counter(await custom_ids(provider, done.output_file_id)) == Counter(
        f"req-{i}" for i in range(8)
    )
    finished = await provider.get_batch(ended)
    assert finished.status == "completed" and finished.output_file_id == ended_out
    assert len(await custom_ids(provider, ended_out)) == 8
    assert not legacy.exists() and (tmp_path / "emulated.imported").is_dir()
    await provider.close()

    again = adapter(config, blobs, store)  # a second start imports nothing more
    assert (await again.get_batch(ended)).status == "completed"
    assert len(served.served) == 5
    await again.close()


async def test_a_reloaded_adapter_takes_over_only_once_the_old_one_closed(
    make_upstream: MakeUpstream, tmp_path: Path
) -> None:
    served, config, store, folder = await scene(make_upstream, tmp_path, latency=0.03)
    blobs = LocalBlobs(folder)  # one process: one blob store, and every lease its own

    def build() -> EmulatedProvider:
        built = build_provider("local", config.providers["local"], state=store, blobs=blobs)
        assert isinstance(built, EmulatedProvider)
        built.renew_seconds = 0.05
        return built

    old = build()
    batch = await start(old, tmp_path)
    await until(old, batch.id, completed_at_least(2))
    new = build()  # a config reload: the old adapter keeps running for a grace period
    await asyncio.sleep(0.2)  # a few lease rounds of the new adapter
    assert not new._runs
    live = await new.get_batch(batch.id)  # the old adapter's live counts
    assert live.request_counts is not None and live.request_counts.completed >= 2
    await old.close()

    done = await until(new, batch.id, lambda b: b.terminal)
    assert done.status == "completed"
    assert max(Counter(served.served).values()) == 1 and len(served.served) == 10
    await new.close()
