"""Two gateway replicas sharing one PostgreSQL: any replica serves any batch, the poller
never polls a batch twice at once, and a replica killed mid-poll loses nothing."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import yaml
from aiohttp.test_utils import TestServer

from tests.fakes.openai_upstream import UPSTREAM, make_openai_upstream
from tests.servers import free_port
from tests.support import chat_file

REPO = Path(__file__).resolve().parent.parent
INTERVAL = 0.3
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@contextmanager
def replica(config: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
            + ["--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)


async def ready(client: openai.AsyncOpenAI, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        assert proc.poll() is None, "a replica exited early"
        try:
            await client.batches.list(limit=1)
            return
        except openai.APIConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError("replica not ready")


async def test_two_replicas_share_work_and_survive_a_sigkill(
    pg_url: str, aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    upstream = await aiohttp_server(make_openai_upstream("sk-replica-test-key", latency=0.15))
    state = upstream.app[UPSTREAM]
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": {"url": pg_url},
                "blobs": {"dir": "./files"},
                "providers": {
                    "up": {
                        "type": "openai",
                        "base_url": str(upstream.make_url("/v1")),
                        "api_key": "sk-replica-test-key",
                    }
                },
                "default": "up",
                "poller": {
                    "interval_seconds": INTERVAL,
                    "jitter": 0.1,
                    "lease_seconds": 1.5,
                    "webhook_interval_seconds": 0.1,
                },
            }
        )
    )
    port_a, port_b = free_port(), free_port()
    with (
        replica(config, port_a, tmp_path / "a.log") as proc_a,
        replica(config, port_b, tmp_path / "b.log") as proc_b,
    ):
        a = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port_a}/v1", api_key="x", max_retries=0)
        b = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port_b}/v1", api_key="x", max_retries=0)
        try:
            await ready(a, proc_a)
            await ready(b, proc_b)
            f = await a.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
            created = [
                await a.batches.create(
                    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                for _ in range(8)
            ]
            # Whatever replica made it, the other serves it.
            cancelled = await b.batches.cancel(created[-1].id)
            assert cancelled.status in ("cancelling", "cancelled")
            assert (await b.batches.retrieve(created[0].id)).id == created[0].id

            await asyncio.sleep(INTERVAL)  # polls are in flight on both replicas now
            proc_a.send_signal(signal.SIGKILL)
            proc_a.wait(timeout=10)

            statuses: dict[str, str] = {}
            for _ in range(300):
                statuses = {x.id: x.status async for x in b.batches.list(limit=100)}
                if set(statuses.values()) <= TERMINAL:
                    break
                await asyncio.sleep(0.1)
        finally:
            await a.close()
            await b.close()

    ids = [x.id for x in created]
    assert sorted(statuses) == sorted(ids)  # no row lost, none duplicated
    assert all(statuses[i] == "completed" for i in ids[:-1]), statuses
    assert statuses[ids[-1]] == "cancelled"
    assert len(state.batches) == len(ids)  # one upstream batch each
    # Only the poller read these batches (the client read the first and cancelled the last).
    upstream_of = {b["metadata"]["gateway_batch_id"]: u for u, b in state.batches.items()}
    polled_only = [f"GET /v1/batches/{upstream_of[i]}" for i in ids[1:-1]]
    assert all(state.peak_by_path[p] == 1 for p in polled_only)  # never two polls at once
    for path in polled_only:
        starts = state.started_by_path[path]
        assert len(starts) >= 3  # validating -> in_progress -> finalizing -> completed
        gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
        assert all(gap >= INTERVAL * 0.85 for gap in gaps), (path, gaps)
