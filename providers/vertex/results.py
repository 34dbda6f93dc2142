"""A Vertex job's prediction files read as one OpenAI output or error file.

Vertex writes `predictions*.jsonl` files (more than one for a big job) under the job's
`outputInfo.gcsOutputDirectory`, in no particular line order. A view reads them in name
order, line by line, translates each line (`translate.py`), matches it back to its
custom_id (`ids.py`) and keeps only its own lines, gathered into chunks of about 64 KiB:
memory is one line, one chunk and the custom_id map, whatever the files' size. The errors
view ends with the requests a cancelled or expired job never ran. The same folder always
gives the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from providers.base import ProviderError
from providers.gcs import GCSClient
from providers.http import iter_lines
from providers.results import CANCELLED, EXPIRED, error_line, stable_hex
from providers.vertex import translate
from providers.vertex.ids import CustomIds, InstanceIds

__all__ = ["PREDICTIONS", "prediction_files", "view_lines"]

PREDICTIONS = re.compile(r"predictions[\w.-]*\.jsonl")
_CHUNK = 64 * 1024
_UNMATCHED = ("invalid_provider_line", "The provider's result line names no request of the batch.")


async def prediction_files(gcs: GCSClient, bucket: str, folder: str) -> list[str]:
    """The job's prediction files, in name order (the order every read uses)."""
    names = [
        item["name"]
        async for item in gcs.list(bucket, folder.rstrip("/") + "/")
        if PREDICTIONS.fullmatch(item["name"].rpartition("/")[2])
    ]
    return sorted(names)


async def view_lines(
    gcs: GCSClient,
    bucket: str,
    files: list[str],
    ids: CustomIds | InstanceIds,
    *,
    output: bool,
    embeddings: bool,
    job: str,
    facts: Mapping[str, Any],
    scrub: Callable[[str], str],
) -> AsyncIterator[bytes]:
    out = bytearray()
    model, created = facts.get("model") or "", facts.get("created") or 0
    number = 0
    for name in files:
        async with gcs.download(bucket, name) as chunks:
            async for raw in iter_lines(chunks):
                number += 1
                try:
                    item = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise ProviderError("retryable", "the results are not JSONL") from None
                if not isinstance(item, dict):
                    continue
                custom_id = ids.match(item)
                if custom_id is None:
                    if not output:
                        line_id = f"batch_req_{stable_hex(job, number, 'unmatched')}"
                        out += orjson.dumps(error_line(line_id, None, _UNMATCHED)) + b"\n"
                    continue
                if embeddings:
                    line = translate.embedding_result_line(
                        item, custom_id, model=model, seed=job, scrub=scrub
                    )
                else:
                    line = translate.result_line(
                        item, custom_id, model=model, created=created, seed=job, scrub=scrub
                    )
                if (line["response"]["status_code"] == 200) == output:
                    out += orjson.dumps(line) + b"\n"
                if len(out) >= _CHUNK:
                    yield bytes(out)
                    out.clear()
    never = {"cancelled": CANCELLED, "expired": EXPIRED}.get(facts.get("status") or "")
    if not output and never is not None:
        for custom_id in ids.unmatched():
            out += orjson.dumps(translate.never_ran_line(custom_id, job, never)) + b"\n"
            if len(out) >= _CHUNK:
                yield bytes(out)
                out.clear()
    if out:
        yield bytes(out)
