"""The file layer shared by the sandbox, anthropic and emulated adapters: files in the blob
store with their facts in the provider state, result spools, and the legacy import."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.blobs import LocalBlobs
from providers.base import InputFile, ProviderError
from providers.context import ProviderContext
from providers.results import CANCELLED, error_line, response_line
from providers.stored_files import ResultSpool, StoredFiles, import_legacy_dir
from tests.support import MemoryState, chat_file

BATCH = re.compile(r"batch_t[0-9a-f]{4}")


def ok(custom_id: str) -> dict[str, object]:
    body = {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    return response_line(f"batch_req_{custom_id}", custom_id, 200, "req_1", body)


def stored(tmp_path: Path) -> tuple[StoredFiles, MemoryState, Path]:
    state, folder = MemoryState(), tmp_path / "blobs"
    context = ProviderContext("p", frozenset(), state, LocalBlobs(folder))
    return StoredFiles(context, "file-t", "the test store"), state, folder


async def read(files: StoredFiles, file_id: str) -> bytes:
    async with files.open(file_id) as chunks:
        return b"".join([chunk async for chunk in chunks])


def blob_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


async def test_copy_in_reads_back_by_lines_and_deletes(tmp_path: Path) -> None:
    files, state, folder = stored(tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_bytes(chat_file(2) + b"\n  \n" + chat_file(1).rstrip(b"\n"))  # blanks, no final \n
    upload = InputFile(source, "file-abc.jsonl", source.stat().st_size, 3, "/v1/x", ())
    file_id = await files.copy_in(upload)

    info = await files.info(file_id)
    assert (info.filename, info.bytes) == ("file-abc.jsonl", source.stat().st_size)
    assert await read(files, file_id) == source.read_bytes()
    numbered = [(n, json.loads(raw)["custom_id"]) async for n, raw in files.lines(file_id)]
    assert numbered == [(1, "req-0"), (2, "req-1"), (5, "req-0")]  # blank lines still count
    assert blob_names(folder) == [f"upstream-{file_id}"] and file_id in state.states

    await files.delete(file_id)
    assert blob_names(folder) == [] and state.states == {}
    with pytest.raises(ProviderError) as info_error:
        await files.info(file_id)
    assert info_error.value.kind == "not_found"


async def test_spool_publishes_two_files_and_an_empty_one_is_none(tmp_path: Path) -> None:
    files, _, folder = stored(tmp_path)
    async with ResultSpool(files, "batch_1") as spool:
        await spool.add(ok("a"))
        await spool.add(error_line("batch_req_b", "b", CANCELLED))
        await spool.add(ok("c"))
        with pytest.raises(ProviderError) as unpublished:
            await files.info(spool.file_ids[0])  # written, not yet published
        result = await spool.publish()
    assert (result["completed"], result["failed"]) == (2, 1)
    assert result["usage"]["total_tokens"] == 10
    assert unpublished.value.message == "No such file in the test store."
    output = await read(files, result["output_file_id"])
    assert [json.loads(raw)["custom_id"] for raw in output.splitlines()] == ["a", "c"]
    assert (await files.info(result["output_file_id"])).bytes == len(output)
    assert (await files.info(result["error_file_id"])).filename == "batch_1_error.jsonl"

    async with ResultSpool(files, "batch_2") as only_ok:
        await only_ok.add(ok("a"))
        second = await only_ok.publish()
    assert second["error_file_id"] is None
    assert f"upstream-{only_ok.file_ids[1]}" not in blob_names(folder)


async def test_publishing_the_same_ids_twice_is_harmless(tmp_path: Path) -> None:
    files, state, _ = stored(tmp_path)
    ids = (files.new_id(), files.new_id())
    results = []
    for _ in range(2):  # two replicas finishing the same batch
        async with ResultSpool(files, "batch_3", file_ids=ids) as spool:
            await spool.add(ok("a"))
            results.append(await spool.publish())
    assert results[0] == results[1] and results[0]["output_file_id"] == ids[0]
    assert len(await read(files, ids[0])) == (await files.info(ids[0])).bytes
    assert set(state.states) == {ids[0]}


async def test_a_failed_spool_leaves_nothing(tmp_path: Path) -> None:
    files, state, folder = stored(tmp_path)
    with pytest.raises(RuntimeError):
        async with ResultSpool(files, "batch_4") as spool:
            await spool.add(ok("a"))
            raise RuntimeError("upstream stream broke")
    assert blob_names(folder) == [] and not list((folder / "tmp").iterdir())
    assert state.states == {}


async def test_foreign_ids_never_become_blob_keys(tmp_path: Path) -> None:
    files, _, _ = stored(tmp_path)
    for bad in ("../etc/passwd", "file-other0123456789abcdef01234567", "file-t" + "0" * 23):
        with pytest.raises(ProviderError) as info:
            files.blob_key(bad)
        assert info.value.kind == "not_found"
        with pytest.raises(ProviderError):
            async with files.open(bad):
                pass
    with pytest.raises(ProviderError):  # the right shape, but no such file
        async with files.open(files.new_id()):
            pass


def write_legacy(folder: Path, file_id: str, data: bytes, batch: dict[str, Any]) -> None:
    """The layout earlier versions wrote."""
    folder.mkdir(parents=True)
    (folder / f"{file_id}.jsonl").write_bytes(data)
    meta = {"id": file_id, "filename": "in.jsonl", "bytes": len(data), "created_at": 1_700_000_000}
    (folder / f"{file_id}.meta.json").write_text(json.dumps(meta))
    (folder / f"{batch['id']}.json").write_text(json.dumps(batch))
    (folder / "file-t0123456789abcdef01234567.jsonl").write_bytes(b"unpublished")  # no sidecar
    (folder / "batch_other.json").write_text("{}")  # not a state of this shape


async def test_legacy_import_runs_once_and_keeps_the_folder(tmp_path: Path) -> None:
    files, state, folder = stored(tmp_path)
    legacy, file_id, data = tmp_path / "old", files.new_id(), chat_file(3)
    write_legacy(legacy, file_id, data, {"id": "batch_t0001", "input_file_id": file_id})

    async def save(batch: dict[str, Any]) -> None:
        if await state.load(batch["id"]) is None:
            await state.save(batch["id"], batch)

    imported = await import_legacy_dir(legacy, files, BATCH, save)
    assert [s["id"] for s in imported] == ["batch_t0001"]
    assert await state.load("batch_t0001") == {"id": "batch_t0001", "input_file_id": file_id}
    info = await files.info(file_id)
    assert (info.filename, info.bytes, info.created_at) == ("in.jsonl", len(data), 1_700_000_000)
    assert await read(files, file_id) == data
    assert not legacy.exists()
    kept = tmp_path / "old.imported"
    assert (kept / "file-t0123456789abcdef01234567.jsonl").exists()
    assert blob_names(folder) == [f"upstream-{file_id}"]  # the unpublished one stays behind

    assert await import_legacy_dir(legacy, files, BATCH, save) == []  # nothing left to do

    # The same folder again (an import cut short before its rename): same result.
    kept.rename(legacy)
    before = dict(state.states)
    await import_legacy_dir(legacy, files, BATCH, save)
    assert state.states == before and await read(files, file_id) == data
    assert kept.is_dir() and not legacy.exists()
