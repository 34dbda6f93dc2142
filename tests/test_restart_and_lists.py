"""State survives a restart on the same SQLite file; lists page with the SDK's auto-pager."""

from __future__ import annotations

import io
from pathlib import Path

import openai
import pytest

from gateway.store.migrate import migrations
from gateway.store.sqlite import SQLiteStore
from tests.conftest import Gateway, StartGateway
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_batches_and_files_survive_a_restart(
    start_gateway: StartGateway, tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    if backend == "postgres":
        config = make_config(tmp_path, store={"url": request.getfixturevalue("pg_url")})
    else:
        config = make_config(tmp_path)
    first = await start_gateway(config)
    uploaded = await first.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(4))), purpose="batch"
    )
    done = await wait_terminal(
        first.client,
        (
            await first.client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        ).id,
    )
    active = await first.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    output_before = (await first.client.files.content(done.output_file_id or "")).content
    await first.server.close()  # runs cleanup_ctx: store and providers closed

    second = await start_gateway(config)
    assert (await second.client.files.retrieve(uploaded.id)).bytes == uploaded.bytes
    again = await second.client.batches.retrieve(done.id)
    assert again.model_dump() == done.model_dump()
    assert (await second.client.files.content(done.output_file_id or "")).content == output_before
    finished = await wait_terminal(second.client, active.id)
    assert finished.status == "completed"
    assert [b.id async for b in second.client.batches.list()] == [active.id, done.id]


async def test_a_pending_create_is_left_to_its_live_owner_however_old(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    """A pending row is settled only once the instance creating it is gone, never by age."""
    config = make_config(tmp_path)
    gw = await start_gateway(config)
    uploaded = await gw.client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch"
    )
    batch = await gw.client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None
    # A create still running in this live instance: its answer is on the way.
    record.pending, record.upstream_id, record.owner = True, None, gw.service.instance_id
    record.object["status"] = "validating"
    await gw.service.store.update_batch(record)
    assert await gw.service.settle_pending() == 0
    still = await gw.service.store.get_batch(batch.id)
    assert still is not None and still.pending and still.upstream_id is None
    await gw.server.close()  # the owner is gone now

    restarted = await start_gateway(config)  # settles what its predecessor left
    await restarted.service.settle_pending()
    attached = await restarted.service.store.get_batch(batch.id)
    assert attached is not None and not attached.pending and attached.upstream_id


async def test_migrations_are_versioned_and_applied_once(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    store = await SQLiteStore.open(path)
    version = await store.schema_version()
    await store.close()
    store = await SQLiteStore.open(path)  # re-open: nothing applied twice
    assert await store.schema_version() == version == migrations("sqlite")[-1].version
    await store.close()


async def test_batch_list_pages_across_many_pages(gateway: Gateway) -> None:
    client = gateway.client
    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
    )
    created = []
    for _ in range(25):
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        created.append(batch.id)

    page = await client.batches.list(limit=7)
    assert page.has_more is True
    assert [b.id for b in page.data] == created[::-1][:7]
    seen = [b.id async for b in client.batches.list(limit=7)]  # auto-pager: 4 pages
    assert seen == created[::-1]

    raw = await (await gateway.http.get(gateway.url("/v1/batches?limit=100"))).json()
    assert raw["first_id"] == created[-1] and raw["last_id"] == created[0]
    assert raw["has_more"] is False

    for bad in ("limit=0", "limit=101", "limit=x", "after=batch_unknown"):
        with pytest.raises(openai.BadRequestError):
            await client.get(f"/batches?{bad}", cast_to=object)


async def test_file_list_pages_both_orders(gateway: Gateway) -> None:
    client = gateway.client
    ids = []
    for i in range(7):
        f = await client.files.create(
            file=(f"{i}.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
        )
        ids.append(f.id)
    assert [f.id async for f in client.files.list(limit=3)] == ids[::-1]
    assert [f.id async for f in client.files.list(limit=2, order="asc")] == ids
