"""`serve` SIGKILLed at random moments under creating clients: nothing duplicated, nothing
orphaned, every batch a client was told about runs to its end, and a restarted process
takes over at once.

The gateway runs as real `python -m gateway serve` processes on a real SQLite file (one
process, restarted after each kill) or a real PostgreSQL (two replicas, one of them killed
again and again), against a fake OpenAI-compatible account that is busy with other people's
batches the whole time.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import yaml
from aiohttp.test_utils import TestServer

from gateway.store import open_store
from tests.fakes.openai_upstream import UPSTREAM, FakeOpenAIState, make_openai_upstream
from tests.servers import free_port
from tests.support import chat_file

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-crash-safety-key"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
Servers = Callable[..., Awaitable[TestServer]]


class Replica:
    """One `serve` process on a fixed port, started again after each kill."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log, self.port = config, log, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1", api_key="x", max_retries=0
        )

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
                + ["--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for _ in range(400):
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                await self.client.batches.list(limit=1)
                return
            except openai.APIConnectionError:
                await asyncio.sleep(0.025)
        raise AssertionError("the gateway did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def write_config(tmp_path: Path, store_url: str, upstream: TestServer) -> Path:
    config = tmp_path / "config.yaml"
    provider = {
        "type": "openai",
        "base_url": str(upstream.make_url("/v1")),
        "api_key": KEY,
        "read_timeout_seconds": 2,
        "retry_backoff_seconds": 0.05,
    }
    poller = {
        "interval_seconds": 0.5,
        "webhook_interval_seconds": 0.1,
        "heartbeat_seconds": 0.2,
        "repair_interval_seconds": 2,
        # Left at its default: a successor must not wait for it to run out.
        "lease_seconds": 120,
    }
    raw = {
        "store": {"url": store_url},
        "blobs": {"dir": str(tmp_path / "files")},
        "auth": {"open": True},
        "logging": {"access_log": False},
        "providers": {"up": provider},
        "default": "up",
        "poller": poller,
    }
    config.write_text(yaml.safe_dump(raw))
    return config


async def create_until_killed(
    replicas: list[Replica], seen: list[str], stop: asyncio.Event, clients: int
) -> None:
    """`clients` loops creating batches through the replicas until `stop` is set."""
    uploaded = {}
    for replica in replicas:
        f = await replica.client.files.create(
            file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch"
        )
        uploaded[replica] = f.id

    async def loop(n: int) -> None:
        replica = replicas[n % len(replicas)]
        while not stop.is_set():
            try:
                batch = await replica.client.batches.create(
                    input_file_id=uploaded[replica],
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
            except (openai.APIConnectionError, openai.InternalServerError):
                await asyncio.sleep(0.02)  # killed mid-request: the outcome is the gateway's
            else:
                seen.append(batch.id)

    await asyncio.gather(*(loop(n) for n in range(clients)))


async def rows(store_url: str) -> dict[str, dict[str, Any]]:
    store = await open_store(store_url)
    try:
        async with store._conn() as db:  # type: ignore[attr-defined]
            found = await db.fetch("SELECT id, upstream_id, pending, status FROM batches")
    finally:
        await store.close()
    return {r[0]: {"upstream_id": r[1], "pending": bool(r[2]), "status": r[3]} for r in found}


async def wait_settled(store_url: str, seen: list[str], seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        stored = await rows(store_url)
        done = all(stored[i]["status"] in TERMINAL for i in seen)
        if done and not any(r["pending"] for r in stored.values()):
            return stored
        assert time.monotonic() < deadline, [stored[i] for i in seen if stored[i]["pending"]]
        await asyncio.sleep(0.2)


@asynccontextmanager
async def two_replicas(config: Path, tmp_path: Path) -> AsyncIterator[tuple[Replica, Replica]]:
    """A steady replica (started) and a victim (started by `kill_victim`), stopped after."""
    steady = Replica(config, tmp_path / "steady.log")
    victim = Replica(config, tmp_path / "victim.log")
    with ExitStack() as stack:
        for replica in (steady, victim):
            stack.callback(replica.stop)
        await steady.start()
        try:
            yield steady, victim
        finally:
            await steady.client.close()
            await victim.client.close()


async def kill_victim(
    steady: Replica, victim: Replica, seen: list[str], rng: random.Random, *, clients: int
) -> None:
    """Five rounds: the victim starts, clients create through both, the victim is killed."""
    for _ in range(5):
        await victim.start()
        stop = asyncio.Event()
        creating = asyncio.create_task(create_until_killed([steady, victim], seen, stop, clients))
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        victim.kill()
        await asyncio.sleep(0.3)
        stop.set()
        await creating


async def settled_after_sweep(store_url: str, seen: list[str], seconds: float) -> dict[str, Any]:
    await wait_settled(store_url, seen, seconds)
    await asyncio.sleep(2.5)  # one scheduled orphan sweep after the late answers
    return await rows(store_url)


def audit(state: FakeOpenAIState, stored: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(duplicates, orphans): live tagged upstream batches beyond one per row, or unclaimed."""
    live: dict[str, list[str]] = {}
    for upstream in state.batches.values():
        tag = (upstream.get("metadata") or {}).get("gateway_batch_id")
        if tag and tag in stored and upstream["status"] not in ("cancelling", "cancelled"):
            live.setdefault(tag, []).append(upstream["id"])
    duplicates = sum(len(ids) - 1 for ids in live.values())
    orphans = sum(1 for tag, ids in live.items() for up in ids if stored[tag]["upstream_id"] != up)
    return duplicates, orphans


async def busy_upstream(aiohttp_server: Servers) -> tuple[TestServer, FakeOpenAIState]:
    # Someone else's traffic on the same key: 2,000 batches over the test.
    server = await aiohttp_server(
        make_openai_upstream(KEY, preload_batches=1000, background_creates_per_second=40)
    )
    state = server.app[UPSTREAM]
    state.latency = 0.03  # wider windows for a kill to land in
    return server, state


def first_poll_after(state: FakeOpenAIState, moment: float) -> float:
    polls = [
        t
        for path, starts in state.started_by_path.items()
        if path.startswith("GET /v1/batches/")
        for t in starts
        if t >= moment
    ]
    return min(polls) - moment if polls else float("inf")


async def test_sigkill_ten_times_on_sqlite_loses_and_duplicates_nothing(
    aiohttp_server: Servers, tmp_path: Path
) -> None:
    server, state = await busy_upstream(aiohttp_server)
    db = tmp_path / "gateway.db"
    url = f"sqlite:///{db}"
    replica = Replica(write_config(tmp_path, url, server), tmp_path / "serve.log")
    rng = random.Random(7)
    seen: list[str] = []
    try:
        for _ in range(10):
            await replica.start()
            stop = asyncio.Event()
            clients = asyncio.create_task(create_until_killed([replica], seen, stop, 20))
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            replica.kill()
            stop.set()
            await clients
        await replica.start()
        restarted = time.monotonic()
        stored = await wait_settled(url, seen, 60)
        # Polled again at once, not after the dead process's 120 s leases ran out.
        assert first_poll_after(state, restarted) <= 5
        await asyncio.sleep(2.5)  # one scheduled orphan sweep after the late answers
        stored = await rows(url)
    finally:
        replica.stop()
        await replica.client.close()
    assert len(seen) > 100 and len(set(seen)) == len(seen)
    assert len(state.batches) > 2000  # the busy account's own batches were there too
    assert audit(state, stored) == (0, 0)
    for batch_id in seen:
        assert stored[batch_id]["status"] in TERMINAL
        assert stored[batch_id]["status"] == "failed" or stored[batch_id]["upstream_id"]
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_sigkill_one_of_two_replicas_on_postgres_loses_and_duplicates_nothing(
    pg_url: str, aiohttp_server: Servers, tmp_path: Path
) -> None:
    server, state = await busy_upstream(aiohttp_server)
    config = write_config(tmp_path, pg_url, server)
    seen: list[str] = []
    async with two_replicas(config, tmp_path) as (steady, victim):
        await kill_victim(steady, victim, seen, random.Random(11), clients=20)
        # The survivor takes over the dead replica's creates and 120 s leases within
        # seconds: waiting them out would take longer than this.
        stored = await settled_after_sweep(pg_url, seen, 60)
    assert len(seen) > 50 and len(set(seen)) == len(seen)
    assert audit(state, stored) == (0, 0)
    for batch_id in seen:
        assert stored[batch_id]["status"] in TERMINAL
