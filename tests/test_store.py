"""The Store contract, run against SQLite and a real PostgreSQL server alike."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.store import BatchRecord, FileRecord, Store, UnknownCursor
from gateway.store.migrate import migrations
from gateway.store.postgres import PostgresStore
from gateway.store.sql import SQLStore
from gateway.store.sqlite import SQLiteStore

LATEST = migrations("sqlite")[-1].version
LEASES = 4  # the migration that added batch leases


async def open_sql(url: str, *, schema_upto: int | None = None) -> SQLStore:
    """A second, independent store (own connections) on the same database."""
    if url.startswith("sqlite:///"):
        return await SQLiteStore.open(url.removeprefix("sqlite:///"), schema_upto=schema_upto)
    return await PostgresStore.open(url, schema_upto=schema_upto)


def file_record(n: int, *, tenant: str = "a", purpose: str = "batch", **kw: Any) -> FileRecord:
    fields: dict[str, Any] = {
        "id": f"file-{n:04d}",
        "tenant": tenant,
        "purpose": purpose,
        "filename": f"{n}.jsonl",
        "bytes": 100 + n,
        "created_at": 1_700_000_000 + n,
    }
    if purpose == "batch":
        fields |= {
            "expires_at": 4_000_000_000,  # far ahead: lists hide expired files
            "sha256": "ab" * 32,
            "line_count": n,
            "endpoint": "/v1/chat/completions",
            "models": ("gpt-4o-mini", "gpt-4o"),
            "blob": f"file-{n:04d}",
        }
    return FileRecord(**(fields | kw))


def batch_record(
    n: int, *, tenant: str = "a", status: str = "in_progress", pending: bool = False
) -> BatchRecord:
    return BatchRecord(
        id=f"batch_{n:04d}",
        tenant=tenant,
        provider="sandbox",
        input_file_id="file-0001",
        created_at=1_700_000_000 + n,
        object={"id": f"batch_{n:04d}", "status": status, "metadata": {"n": str(n)}},
        upstream_id=None if pending else f"up-{n}",
        output_ttl=3600,
        pending=pending,
    )


# files


async def test_file_round_trips_and_is_scoped_to_its_tenant(store: Store) -> None:
    record = file_record(1)
    output = file_record(2, purpose="batch_output", provider="p", upstream_id="u-2", batch_id="b")
    await store.insert_file(record)
    await store.insert_file(output)
    assert await store.get_file(record.id) == record
    assert await store.get_file(record.id, "a") == record
    assert await store.get_file(output.id) == output
    assert await store.get_file(record.id, "b") is None
    assert await store.get_file("file-missing") is None


async def test_find_file_by_upstream(store: Store) -> None:
    output = file_record(2, purpose="batch_output", provider="p", upstream_id="u-2")
    await store.insert_file(output)
    assert await store.find_file_by_upstream("p", "u-2") == output
    assert await store.find_file_by_upstream("q", "u-2") is None
    assert await store.find_file_by_upstream("p", "u-3") is None


async def test_a_provider_file_stored_twice_at_once_keeps_the_first_row(store: Store) -> None:
    # A poll and a cancel of one batch can both meet its new output file at once.
    first, second = (
        file_record(n, purpose="batch_output", provider="p", upstream_id="u-2") for n in (2, 3)
    )
    ids = await asyncio.gather(store.insert_file(first), store.insert_file(second))
    assert ids == [first.id, first.id]
    assert await store.find_file_by_upstream("p", "u-2") == first
    assert await store.get_file(second.id) is None
    upload = file_record(4)
    assert await store.insert_file(upload) == upload.id


async def test_list_files_pages_both_orders_with_a_purpose_filter(store: Store) -> None:
    for n in range(1, 6):
        await store.insert_file(file_record(n))
    await store.insert_file(file_record(6, purpose="batch_output", provider="p", upstream_id="6"))
    await store.insert_file(file_record(7, tenant="b"))
    mine = [f"file-{n:04d}" for n in range(1, 7)]

    async def walk(order: str, purpose: str | None) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = await store.list_files("a", purpose=purpose, after=after, limit=2, order=order)
            seen += [f.id for f in page.data]
            if not page.has_more:
                return seen
            after = seen[-1]

    assert await walk("desc", None) == mine[::-1]
    assert await walk("asc", None) == mine
    assert await walk("asc", "batch") == mine[:5]
    assert await walk("desc", "batch_output") == ["file-0006"]
    page = await store.list_files("a", purpose=None, after=None, limit=6, order="asc")
    assert len(page.data) == 6 and page.has_more is False
    page = await store.list_files("a", purpose=None, after="file-0003", limit=1, order="asc")
    assert [f.id for f in page.data] == ["file-0004"] and page.has_more is True


async def test_an_unknown_or_foreign_cursor_raises_unknown_cursor(store: Store) -> None:
    await store.insert_file(file_record(1, tenant="b"))
    await store.insert_batch(batch_record(1, tenant="b"))
    for after in ("file-nope", "file-0001"):
        with pytest.raises(UnknownCursor):
            await store.list_files("a", purpose=None, after=after, limit=5, order="desc")
    for after in ("batch_nope", "batch_0001"):
        with pytest.raises(UnknownCursor):
            await store.list_batches("a", after=after, limit=5)


async def test_upstream_copies_are_recorded_per_provider_and_the_first_stands(
    store: Store,
) -> None:
    await store.insert_file(file_record(1))
    assert await store.get_upstream_file("file-0001", "p") is None
    assert await store.put_upstream_file("file-0001", "p", "up-1") == "up-1"
    assert await store.put_upstream_file("file-0001", "q", "other-1") == "other-1"
    # A second upload racing the first (another replica): every batch uses the first.
    assert await store.put_upstream_file("file-0001", "p", "up-2") == "up-1"
    assert await store.get_upstream_file("file-0001", "p") == "up-1"
    assert await store.get_upstream_file("file-0001", "q") == "other-1"
    await store.delete_upstream_file("file-0001", "p")  # gone at the provider: upload again
    assert await store.put_upstream_file("file-0001", "p", "up-3") == "up-3"


async def test_delete_file_removes_it_and_its_upstream_copies(store: Store) -> None:
    await store.insert_file(file_record(1))
    await store.insert_file(file_record(2))
    await store.put_upstream_file("file-0001", "p", "up-1")
    await store.delete_file("file-0001")
    assert await store.get_file("file-0001") is None
    assert await store.get_upstream_file("file-0001", "p") is None
    assert await store.get_file("file-0002") is not None


# batches


async def test_batch_insert_update_get_and_delete(store: Store) -> None:
    record = batch_record(1, status="validating", pending=True)
    await store.insert_batch(record)
    assert await store.get_batch(record.id) == record
    assert await store.get_batch(record.id, "b") is None

    record.pending, record.upstream_id = False, "up-1"
    record.object = {**record.object, "status": "completed", "request_counts": {"total": 3}}
    await store.update_batch(record)
    stored = await store.get_batch(record.id, "a")
    assert stored == record and stored.status == "completed"

    await store.delete_batch(record.id)
    assert await store.get_batch(record.id) is None


async def test_list_batches_pages_newest_first(store: Store) -> None:
    for n in range(1, 8):
        await store.insert_batch(batch_record(n))
    await store.insert_batch(batch_record(8, tenant="b"))
    seen: list[str] = []
    after = None
    while True:
        page = await store.list_batches("a", after=after, limit=3)
        seen += [b.id for b in page.data]
        if not page.has_more:
            break
        after = seen[-1]
    assert seen == [f"batch_{n:04d}" for n in range(7, 0, -1)]


async def test_pending_and_active_batches(store: Store) -> None:
    await store.insert_batch(batch_record(1, status="validating", pending=True))
    await store.insert_batch(batch_record(2, status="in_progress"))
    await store.insert_batch(batch_record(3, status="completed"))
    await store.insert_batch(batch_record(4, status="cancelling"))
    await store.insert_batch(batch_record(5, status="failed"))
    assert [b.id for b in await store.pending_batches()] == ["batch_0001"]
    assert [b.id for b in await store.active_batches()] == ["batch_0002", "batch_0004"]


async def test_delete_upstream_file_forgets_one_provider_copy(store: Store) -> None:
    await store.put_upstream_file("file-0001", "p", "up-1")
    await store.put_upstream_file("file-0001", "q", "up-2")
    await store.delete_upstream_file("file-0001", "p")
    assert await store.get_upstream_file("file-0001", "p") is None
    assert await store.get_upstream_file("file-0001", "q") == "up-2"


async def test_active_batches_by_provider_and_counts(store: Store) -> None:
    await store.insert_batch(batch_record(1, status="in_progress"))
    other = batch_record(2, status="in_progress")
    other.provider = "remote"
    await store.insert_batch(other)
    await store.insert_batch(batch_record(3, status="completed"))
    await store.insert_batch(batch_record(4, status="validating", pending=True))
    assert [b.id for b in await store.active_batches("remote")] == ["batch_0002"]
    assert [b.id for b in await store.active_batches("sandbox")] == ["batch_0001"]
    assert sorted(await store.count_batches()) == [
        ("remote", "in_progress", 1),
        ("sandbox", "completed", 1),
        ("sandbox", "in_progress", 1),
    ]


async def test_a_webhook_event_is_queued_with_the_update(store: Store) -> None:
    record = batch_record(1)
    record.webhook = "ops"
    await store.insert_batch(record)
    record.object = {**record.object, "status": "completed"}
    record.provider = "fallback"
    await store.update_batch(record, event=b'{"type": "batch.completed"}')
    stored = await store.get_batch(record.id)
    assert stored is not None and (stored.status, stored.provider) == ("completed", "fallback")

    [due] = await store.due_deliveries(now=time.time() + 1, limit=10)
    assert (due.batch_id, due.webhook, due.event, due.attempts) == (
        record.id,
        "ops",
        b'{"type": "batch.completed"}',
        0,
    )
    assert await store.due_deliveries(now=0, limit=10) == []
    await store.finish_delivery(due.id, delivered=False, next_attempt_at=5e9, error="HTTP 500")
    assert await store.due_deliveries(now=time.time() + 1, limit=10) == []
    [retry] = await store.due_deliveries(now=5e9, limit=10)
    assert retry.attempts == 1
    await store.finish_delivery(retry.id, delivered=True, next_attempt_at=None, error=None)
    assert await store.due_deliveries(now=1e10, limit=10) == []

    # Without a webhook on the batch, an event queues nothing.
    plain = batch_record(2)
    await store.insert_batch(plain)
    await store.update_batch(plain, event=b"{}")
    assert await store.due_deliveries(now=1e10, limit=10) == []


async def test_a_terminal_batch_is_final_for_writers_holding_an_older_view(store: Store) -> None:
    record = batch_record(1)
    record.webhook = "ops"
    await store.insert_batch(record)
    stale = batch_record(1)
    stale.webhook = "ops"
    record.object = {**record.object, "status": "completed"}
    assert await store.update_batch(record, event=b'{"type": "batch.completed"}')

    stale.object = {**stale.object, "status": "finalizing"}
    assert not await store.update_batch(stale)
    stale.object = {**stale.object, "status": "cancelled"}
    assert not await store.update_batch(stale, event=b'{"type": "batch.cancelled"}')
    stored = await store.get_batch(record.id)
    assert stored is not None and stored.status == "completed"
    [due] = await store.due_deliveries(now=time.time() + 1, limit=10)
    assert due.event == b'{"type": "batch.completed"}'


async def test_quota_counts_per_tenant(store: Store) -> None:
    await store.insert_file(file_record(1))  # 101 bytes
    await store.insert_file(file_record(2))  # 102 bytes
    await store.insert_file(file_record(3, purpose="batch_output", provider="p", upstream_id="3"))
    await store.insert_file(file_record(4, tenant="b"))
    assert await store.bytes_stored("a") == 203  # only blobs the gateway holds
    assert await store.bytes_stored("nobody") == 0
    await store.insert_batch(batch_record(1, status="in_progress"))
    await store.insert_batch(batch_record(2, status="validating", pending=True))
    await store.insert_batch(batch_record(3, status="completed"))
    await store.insert_batch(batch_record(4, tenant="b"))
    assert await store.count_active_batches("a") == 2  # pending creates count
    assert await store.count_active_batches("nobody") == 0


async def test_expired_files_leave_lists_and_wait_for_their_batches(store: Store) -> None:
    now = int(time.time())
    await store.insert_file(file_record(1, expires_at=now - 10))  # read by a running batch
    await store.insert_file(file_record(2, expires_at=now - 5))
    await store.insert_file(file_record(3, expires_at=now + 3600))
    await store.insert_file(file_record(4, purpose="batch_output", provider="p", upstream_id="4"))
    await store.insert_batch(batch_record(1, status="in_progress"))  # input file-0001
    assert await store.file_in_use("file-0001") is True
    assert await store.file_in_use("file-0002") is False

    page = await store.list_files("a", purpose=None, after=None, limit=10, order="asc")
    assert [f.id for f in page.data] == ["file-0003", "file-0004"]
    assert [f.id for f in await store.expired_files(now + 0.5, 10)] == ["file-0002"]
    later = await store.expired_files(now + 7200, 10)
    assert [f.id for f in later] == ["file-0002", "file-0003"]
    assert len(await store.expired_files(now + 7200, 1)) == 1


async def test_files_to_keep_are_remote_outputs_of_ended_batches_without_a_copy(
    store: Store,
) -> None:
    now = int(time.time())
    await store.insert_batch(batch_record(1, status="completed"))
    await store.insert_batch(batch_record(2, status="in_progress"))
    for n, batch, provider, extra in (
        (11, "batch_0001", "p", {}),
        (12, "batch_0001", "p", {}),
        (13, "batch_0002", "p", {}),  # its batch is still running
        (14, "batch_0001", "q", {}),  # another provider
        (15, "batch_0001", "p", {"expires_at": now - 1}),
        (16, "batch_0001", "p", {"blob": "file-0016"}),  # already kept
    ):
        await store.insert_file(
            file_record(
                n,
                purpose="batch_output",
                provider=provider,
                upstream_id=f"up-{n}",
                batch_id=batch,
                **extra,
            )
        )
    await store.insert_file(file_record(17))  # an upload: bytes the tenant stores
    stored = await store.bytes_stored("a")

    found = await store.files_to_keep(["p"], "", now, 10)
    assert [f.id for f in found] == ["file-0011", "file-0012"]
    assert [f.id for f in await store.files_to_keep(["p"], "file-0011", now, 10)] == ["file-0012"]
    assert [f.id for f in await store.files_to_keep(["p"], "", now, 1)] == ["file-0011"]
    assert await store.files_to_keep([], "", now, 10) == []
    assert [f.id for f in await store.files_to_keep(["p", "q"], "", now, 10)] == [
        "file-0011",
        "file-0012",
        "file-0014",
    ]

    assert await store.set_file_blob("file-0011", "file-0011.k1", 5000) is True
    assert await store.set_file_blob("file-0011", "file-0011.k2", 5000) is False  # one copy
    assert await store.set_file_blob("file-9999", "gone", 1) is False
    kept = await store.get_file("file-0011")
    assert kept is not None and (kept.blob, kept.bytes) == ("file-0011.k1", 5000)
    assert kept.upstream_id == "up-11"  # still the provider's file too
    assert [f.id for f in await store.files_to_keep(["p"], "", now, 10)] == ["file-0012"]
    assert await store.bytes_stored("a") == stored  # copies don't use the upload budget


# leases


async def test_claim_leases_due_active_batches_in_next_poll_order(store: Store) -> None:
    for n, status in enumerate(["in_progress", "validating", "finalizing", "completed"], 1):
        await store.insert_batch(batch_record(n, status=status))
    await store.insert_batch(batch_record(5, status="validating", pending=True))
    # New batches are due at once; hand them back due at different times.
    claimed = await store.claim_active_batches("setup", 10, 30, now=1000)
    assert sorted(b.id for b in claimed) == ["batch_0001", "batch_0002", "batch_0003"]
    for batch_id, due in (("batch_0001", 1300), ("batch_0002", 1100), ("batch_0003", 1200)):
        assert await store.release_batch(batch_id, "setup", next_poll_at=due)

    assert await store.claim_active_batches("w1", 10, 30, now=1050) == []
    first = await store.claim_active_batches("w1", 2, 30, now=1250)
    assert [b.id for b in first] == ["batch_0002", "batch_0003"]
    assert first[0] == await store.get_batch("batch_0002")
    assert await store.claim_active_batches("w1", 2, 30, now=1260) == []
    for batch in first:
        assert await store.release_batch(batch.id, "w1", next_poll_at=2000)
    assert [b.id for b in await store.claim_active_batches("w2", 5, 30, now=1300)] == ["batch_0001"]


async def test_a_lease_blocks_other_owners_until_it_expires(store: Store) -> None:
    await store.insert_batch(batch_record(1))
    assert len(await store.claim_active_batches("w1", 5, 30, now=1000)) == 1
    assert await store.claim_active_batches("w2", 5, 30, now=1029) == []
    assert await store.claim_active_batches("w1", 5, 30, now=1029) == []
    stolen = await store.claim_active_batches("w2", 5, 30, now=1030)
    assert [b.id for b in stolen] == ["batch_0001"]
    # w1's lease is gone: its release changes nothing, w2's works.
    assert await store.release_batch("batch_0001", "w1", next_poll_at=0) is False
    assert await store.claim_active_batches("w3", 5, 30, now=1031) == []
    assert await store.release_batch("batch_0001", "w2", next_poll_at=1100) is True
    assert await store.release_batch("batch_0001", "w2", next_poll_at=0) is False
    assert await store.claim_active_batches("w3", 5, 30, now=1099) == []
    assert len(await store.claim_active_batches("w3", 5, 30, now=1100)) == 1


async def test_updating_a_claimed_batch_keeps_its_lease(store: Store) -> None:
    record = batch_record(1)
    await store.insert_batch(record)
    await store.claim_active_batches("w1", 5, 30, now=1000)
    record.object = {**record.object, "status": "finalizing"}
    await store.update_batch(record)
    assert await store.claim_active_batches("w2", 5, 30, now=1010) == []
    record.object = {**record.object, "status": "completed"}
    await store.update_batch(record)
    assert await store.claim_active_batches("w2", 5, 30, now=2000) == []


async def test_two_owners_claiming_at_once_never_share_a_batch(
    store: Store, store_url: str
) -> None:
    for n in range(40):
        await store.insert_batch(batch_record(n))
    other = await open_sql(store_url)
    try:
        calls = [
            (store if i % 2 else other).claim_active_batches(f"w{i % 2}", 3, 30, now=1000)
            for i in range(20)
        ]
        results = await asyncio.gather(*calls)
    finally:
        await other.close()
    claimed = [b.id for batch in results for b in batch]
    assert len(claimed) == len(set(claimed)) == 40


# rate windows


async def test_rate_window_counts_up_to_the_limit_then_refuses(store: Store) -> None:
    hits = [await store.hit_rate_window("key-a", 60, 3) for _ in range(5)]
    assert hits == [(True, 1), (True, 2), (True, 3), (False, 3), (False, 3)]
    assert await store.hit_rate_window("key-a", 120, 3) == (True, 1)
    assert await store.hit_rate_window("key-b", 60, 3) == (True, 1)
    with pytest.raises(ValueError):
        await store.hit_rate_window("key-a", 60, 0)


async def test_rate_window_holds_across_stores_hitting_at_once(
    store: Store, store_url: str
) -> None:
    other = await open_sql(store_url)
    try:
        calls = [(store if i % 2 else other).hit_rate_window("k", 0, 15) for i in range(40)]
        results = await asyncio.gather(*calls)
    finally:
        await other.close()
    assert sum(allowed for allowed, _ in results) == 15
    assert sorted(n for allowed, n in results if allowed) == list(range(1, 16))
    assert await store.hit_rate_window("k", 0, 15) == (False, 15)


async def test_prune_rate_windows_drops_old_windows(store: Store) -> None:
    for start in (0, 60, 120):
        await store.hit_rate_window("k", start, 5)
    assert await store.prune_rate_windows(before=120) == 2
    assert await store.hit_rate_window("k", 0, 5) == (True, 1)  # a fresh window again
    assert await store.hit_rate_window("k", 120, 5) == (True, 2)


# migrations


async def test_migrations_apply_once(store_url: str) -> None:
    first = await open_sql(store_url)
    assert await first.schema_version() == LATEST
    assert await first.migrate() == []
    await first.close()
    again = await open_sql(store_url)
    assert await again.schema_version() == LATEST
    await again.close()


async def test_stores_starting_together_migrate_once(store_url: str) -> None:
    stores = await asyncio.gather(*(open_sql(store_url) for _ in range(3)))
    try:
        for opened in stores:
            assert await opened.schema_version() == LATEST
            await opened.insert_file(file_record(len(stores)))  # the schema is whole
            await opened.delete_file(file_record(len(stores)).id)
    finally:
        for opened in stores:
            await opened.close()


async def test_a_version_1_database_upgrades_in_place(store_url: str) -> None:
    old = await open_sql(store_url, schema_upto=1)
    try:
        assert await old.schema_version() == 1
        # A row as the first release wrote it (no webhook, lease or poll columns yet).
        async with old._conn() as db:
            await db.execute(
                "INSERT INTO batches (id, tenant, provider, upstream_id, input_file_id, status,"
                " pending, output_ttl, created_at, object) VALUES (?,?,?,?,?,?,?,?,?,?)",
                "batch_old",
                "a",
                "sandbox",
                "up-1",
                "file-0001",
                "in_progress",
                False,
                None,
                1,
                '{"status": "in_progress"}',
            )
    finally:
        await old.close()

    upgraded = await open_sql(store_url)
    try:
        assert await upgraded.schema_version() == LATEST
        [claimed] = await upgraded.claim_active_batches("w", 5, 30, now=0)
        assert (claimed.id, claimed.status, claimed.pending) == ("batch_old", "in_progress", False)
        assert claimed.webhook is None
    finally:
        await upgraded.close()


async def test_the_version_before_leases_upgrades_in_place(store_url: str) -> None:
    old = await open_sql(store_url, schema_upto=LEASES - 1)
    try:
        await old.insert_file(file_record(1))
        async with old._conn() as db:  # the columns of that version
            record = batch_record(1)
            await db.execute(
                "INSERT INTO batches (id, tenant, provider, input_file_id, created_at, object,"
                " upstream_id, pending, output_ttl, webhook, status)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                *(record.id, record.tenant, record.provider, record.input_file_id),
                *(record.created_at, orjson.dumps(record.object).decode(), record.upstream_id),
                *(record.pending, record.output_ttl, record.webhook, record.status),
            )
        with pytest.raises((sqlite3.OperationalError, asyncpg.PostgresError), match="lease|next"):
            await old.claim_active_batches("w", 1, 30, now=0)
    finally:
        await old.close()

    upgraded = await open_sql(store_url)
    try:
        assert await upgraded.schema_version() == LATEST
        assert await upgraded.get_file("file-0001") == file_record(1)
        assert await upgraded.claim_active_batches("w", 5, 30, now=0) == [batch_record(1)]
    finally:
        await upgraded.close()


async def test_named_leases_have_one_owner_at_a_time(store: SQLStore) -> None:
    assert await store.acquire_lease("housekeeping", "a", 10, now=100)
    assert not await store.acquire_lease("housekeeping", "b", 10, now=105)
    assert await store.acquire_lease("housekeeping", "a", 10, now=105)  # renewed to 115
    assert not await store.acquire_lease("housekeeping", "b", 10, now=114)
    assert await store.acquire_lease("housekeeping", "b", 10, now=115)  # expired: taken over
    assert await store.acquire_lease("other", "a", 10, now=115)
    await store.release_lease("housekeeping", "a")  # not a's any more: nothing changes
    assert not await store.acquire_lease("housekeeping", "a", 10, now=116)
    await store.release_lease("housekeeping", "b")  # b shuts down: a need not wait
    assert await store.acquire_lease("housekeeping", "a", 10, now=116)


async def test_claims_can_be_limited_to_one_provider(store: SQLStore) -> None:
    first, second = batch_record(1), batch_record(2)
    second.provider = "other"
    await store.insert_batch(first)
    await store.insert_batch(second)
    claimed = await store.claim_active_batches("w", 10, 30, now=0, provider="other")
    assert [b.id for b in claimed] == [second.id]


async def test_a_sqlite_file_from_the_first_release_upgrades(tmp_path: Path) -> None:
    """Exactly what the first release left on disk: its bookkeeping table and 0001."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
        " applied_at INTEGER NOT NULL DEFAULT (unixepoch()))"
    )
    db.executescript(migrations("sqlite")[0].sql)
    db.execute("INSERT INTO schema_migrations (version) VALUES (1)")
    db.execute(
        "INSERT INTO batches (id, tenant, provider, upstream_id, input_file_id, status, pending,"
        " output_ttl, created_at, object) VALUES ('batch_old', 'a', 'sandbox', 'up', 'file-x',"
        " 'in_progress', 0, NULL, 1, '{\"status\": \"in_progress\"}')"
    )
    db.commit()
    db.close()

    store = await SQLiteStore.open(str(path))
    try:
        assert await store.schema_version() == LATEST
        [claimed] = await store.claim_active_batches("w", 5, 30, now=0)
        assert (claimed.id, claimed.status, claimed.pending) == ("batch_old", "in_progress", False)
    finally:
        await store.close()


async def test_sqlite_writes_wait_off_the_loop_when_another_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A write that meets a locked database waits on the database thread, not the loop."""
    path = tmp_path / "locked.db"
    store = await open_sql(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)  # another process, say
    other.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, other.execute, "COMMIT")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    running = asyncio.create_task(ticker())
    try:
        started = loop.time()
        await store.insert_batch(batch_record(1))  # must wait for the other writer
        waited = loop.time() - started
    finally:
        running.cancel()
        other.close()
    try:
        assert waited >= 0.25
        assert ticks >= 15  # the event loop kept running meanwhile
        assert await store.get_batch(batch_record(1).id) == batch_record(1)
    finally:
        await store.close()


async def test_provider_state_round_trips_per_provider_and_key(store: Store) -> None:
    assert await store.get_provider_state("sbx", "batch_1") is None
    state = {"id": "batch_1", "counts": [1, 2], "nested": {"ok": True, "text": "é\n"}}
    await store.put_provider_state("sbx", "batch_1", state, active=True, now=1.0)
    await store.put_provider_state("other", "batch_1", {"id": "theirs"}, active=True, now=2.0)
    assert await store.get_provider_state("sbx", "batch_1") == state
    assert await store.get_provider_state("other", "batch_1") == {"id": "theirs"}
    # A save replaces the whole object and its active flag, in one statement.
    await store.put_provider_state(
        "sbx", "batch_1", {"id": "batch_1", "done": 1}, active=False, now=3
    )
    assert await store.get_provider_state("sbx", "batch_1") == {"id": "batch_1", "done": 1}
    await store.delete_provider_state("sbx", "batch_1")
    assert await store.get_provider_state("sbx", "batch_1") is None
    assert await store.get_provider_state("other", "batch_1") == {"id": "theirs"}


async def test_active_provider_states_lists_running_work_oldest_first(store: Store) -> None:
    await store.put_provider_state("emu", "b2", {"id": "b2"}, active=True, now=20.0)
    await store.put_provider_state("emu", "b1", {"id": "b1"}, active=True, now=10.0)
    await store.put_provider_state("emu", "b3", {"id": "b3"}, active=False, now=5.0)
    await store.put_provider_state("else", "b4", {"id": "b4"}, active=True, now=1.0)
    assert await store.active_provider_states("emu") == [{"id": "b1"}, {"id": "b2"}]
    await store.put_provider_state("emu", "b1", {"id": "b1", "result": {}}, active=False, now=30)
    assert await store.active_provider_states("emu") == [{"id": "b2"}]


async def test_provider_state_claims_are_leases_freed_with_their_instance(
    store: SQLStore,
) -> None:
    """`StoreState.claim`: one live process carries on each piece of work; a process that
    is reaped (forget_instance) frees its claims at once."""
    from gateway.provider_state import StoreState

    one, two = StoreState(store, "emu", "one"), StoreState(store, "emu", "two")
    assert await one.claim("b1", 60)
    assert not await two.claim("b1", 60)
    assert await one.claim("b1", 60)  # renewed by its holder
    assert await two.claim("b2", 60)  # another key, another holder
    await store.forget_instance("one")
    assert await two.claim("b1", 60)
    await two.release("b1")
    assert await one.claim("b1", 60)
