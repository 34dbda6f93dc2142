"""Sharded batches while a replica is SIGKILLed again and again: every child exists once
upstream, no upstream batch is orphaned, and every batch a client holds ends with all its
lines merged.

Two real `python -m gateway serve` replicas on a real PostgreSQL share the work; one of them
is killed at random moments while clients create sharded batches (each split into children
at two providers, which are one busy fake account).
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from tests.support import read_lines
from tests.test_crash_safety import (
    KEY,
    TERMINAL,
    Servers,
    audit,
    busy_upstream,
    kill_victim,
    settled_after_sweep,
    two_replicas,
)


def write_sharding_config(tmp_path: Path, store_url: str, base_url: str) -> Path:
    provider = {
        "type": "openai",
        "base_url": base_url,
        "api_key": KEY,
        "read_timeout_seconds": 2,
        "retry_backoff_seconds": 0.05,
        "max_batch_lines": 1,  # a 2-line batch becomes two children
    }
    raw = {
        "store": {"url": store_url},
        "blobs": {"dir": str(tmp_path / "files")},
        "auth": {"open": True},
        "logging": {"access_log": False},
        "providers": {"a": provider, "b": dict(provider)},
        "routes": [{"match": {}, "shard": {"across": ["a", "b"]}}],
        "default": "a",
        "poller": {
            "interval_seconds": 0.3,
            "webhook_interval_seconds": 0.1,
            "heartbeat_seconds": 0.2,
            "repair_interval_seconds": 2,
            "lease_seconds": 120,
        },
        "usage": {"enabled": False},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


async def test_sharded_batches_survive_a_replica_killed_five_times(
    pg_url: str, aiohttp_server: Servers, tmp_path: Path
) -> None:
    server, state = await busy_upstream(aiohttp_server)
    config = write_sharding_config(tmp_path, pg_url, str(server.make_url("/v1")))
    rng = random.Random(19)
    seen: list[str] = []
    async with two_replicas(config, tmp_path) as (steady, victim):
        await kill_victim(steady, victim, seen, rng, clients=6)
        stored = await settled_after_sweep(pg_url, seen, 90)
        assert len(seen) > 10 and len(set(seen)) == len(seen)
        # Children are rows too: each has exactly one live upstream batch, none orphaned.
        assert audit(state, stored) == (0, 0)
        for batch_id in seen:
            assert stored[batch_id]["status"] in TERMINAL
        for batch_id in seen:  # every line ran: no child was lost, cancelled or failed
            batch = await steady.client.batches.retrieve(batch_id)
            assert batch.status == "completed", batch
            assert batch.request_counts is not None and batch.request_counts.completed == 2
        for batch_id in rng.sample(seen, 5):
            batch = await steady.client.batches.retrieve(batch_id)
            out = await read_lines(steady.client, batch.output_file_id)
            assert set(out) == {"req-0", "req-1"}
    # A parent never reaches a provider itself; its two children do.
    assert all(stored[i]["upstream_id"] is None for i in seen)
    assert sum(1 for r in stored.values() if r["upstream_id"]) >= 2 * len(seen)
