"""Batches their provider never ends: past `expires_at` plus the grace, the gateway asks once
more, cancels at the provider and ends the batch `expired`."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.test_utils import TestServer

from tests.conftest import StartGateway
from tests.fakes.openai_upstream import (
    UPSTREAM,
    _chat_completion,
    _result_line,
    _store_file,
    make_openai_upstream,
)
from tests.support import chat_file, make_config
from tests.test_resilience import KEY, remote

Servers = Callable[..., Awaitable[TestServer]]


async def test_a_batch_past_its_expiry_is_cancelled_upstream_and_expired(
    aiohttp_server: Servers, start_gateway: StartGateway, tmp_path: Path
) -> None:
    server = await aiohttp_server(make_openai_upstream(KEY))
    state = server.app[UPSTREAM]
    config = make_config(
        tmp_path,
        providers={"up": remote(server)},
        default="up",
        poller={"enabled": False, "expiry_grace_seconds": 60},
    )
    gw = await start_gateway(config)
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(3))), purpose="batch"
    )
    batch = await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    running = await gw.client.batches.retrieve(batch.id)
    assert running.status == "in_progress"
    (upstream,) = state.batches.values()
    # Within the grace nothing happens; past it, the batch is overdue.
    upstream["expires_at"] = int(time.time()) - 30
    assert (await gw.client.batches.retrieve(batch.id)).status == "finalizing"
    upstream["status"], upstream["finalizing_at"] = "in_progress", None  # stuck there
    upstream["expires_at"] = int(time.time()) - 120
    # What it did finish is in a partial output file, reported once it stops.
    partial = _result_line("req-0", 200, _chat_completion("gpt-4o-mini", "req-0")) + "\n"
    done = _store_file(state, partial.encode(), "partial.jsonl", "batch_output", None)
    upstream["output_file_id"] = done["id"]
    upstream["request_counts"] = {"total": 3, "completed": 1, "failed": 0}
    ended = await gw.client.batches.retrieve(batch.id)
    assert ended.status == "expired" and ended.expired_at is not None
    assert ended.request_counts is not None
    assert (ended.request_counts.total, ended.request_counts.completed) == (3, 1)
    assert ended.output_file_id is not None and ended.output_file_id != done["id"]
    lines = (await gw.client.files.content(ended.output_file_id)).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == ["req-0"]
    assert ("POST", f"/v1/batches/{upstream['id']}/cancel") in state.requests
    assert upstream["status"] in ("cancelling", "cancelled")  # no longer running (or billing)
    assert (await gw.client.batches.retrieve(batch.id)).status == "expired"  # final
