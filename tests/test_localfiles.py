"""The on-disk file store and result spool shared by the sandbox, anthropic and emulated
adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.base import ProviderError
from providers.localfiles import LocalFiles, ResultSpool
from providers.results import CANCELLED, error_line, response_line


def ok(custom_id: str) -> dict[str, object]:
    body = {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    return response_line(f"batch_req_{custom_id}", custom_id, 200, "req_1", body)


def test_spool_recovers_after_a_crash_and_cuts_a_torn_line(tmp_path: Path) -> None:
    files = LocalFiles(tmp_path, "file-t", "the test store")
    first = ResultSpool(files, "batch_1", durable=True)
    with first.writing(append=True):
        first.add(ok("a"))
        first.add(error_line("batch_req_b", "b", CANCELLED))
        first.add(ok("c"))
    with first.paths[0].open("ab") as fh:
        fh.write(b'{"id":"batch_req_d","custom_id":"d","respo')  # the crash

    again = ResultSpool(files, "batch_1", file_ids=first.file_ids, durable=True)
    assert again.recover() == {"a", "b", "c"}
    assert (again.completed, again.failed) == (2, 1)
    assert again.tally.usage()["total_tokens"] == 10
    assert first.paths[0].read_bytes().endswith(b"}\n")
    with again.writing(append=True):
        again.add(ok("d"))

    result = again.publish()
    assert (result["completed"], result["failed"]) == (3, 1)
    assert result["output_file_id"] == first.file_ids[0]
    assert again.publish() == result  # publishing twice is harmless


async def test_unpublished_and_foreign_ids_are_not_found(tmp_path: Path) -> None:
    files = LocalFiles(tmp_path, "file-t", "the test store")
    spool = ResultSpool(files, "batch_2")
    with spool.writing():
        spool.add(ok("a"))
    with pytest.raises(ProviderError) as info:
        await files.info(spool.file_ids[0])  # written, not yet published
    assert (
        info.value.kind == "not_found" and info.value.message == "No such file in the test store."
    )
    result = spool.publish()
    assert result["error_file_id"] is None and not spool.paths[1].exists()
    assert (await files.info(result["output_file_id"])).filename == "batch_2_output.jsonl"
    for bad in ("../etc/passwd", "file-other0123456789abcdef01234567"):
        with pytest.raises(ProviderError):
            files.path(bad)


def test_a_failed_spool_leaves_no_partial_files(tmp_path: Path) -> None:
    spool = ResultSpool(LocalFiles(tmp_path, "file-t", "the test store"), "batch_3")
    with pytest.raises(RuntimeError), spool.writing():
        spool.add(ok("a"))
        raise RuntimeError("upstream stream broke")
    assert not any(path.exists() for path in spool.paths)
