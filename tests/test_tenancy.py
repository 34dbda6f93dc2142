"""Tenant isolation: another tenant's objects are indistinguishable from unknown ids.

The matrix: every endpoint that takes an id × every kind of object (input file,
output file, batch) × both directions between two keys. A foreign id must get
exactly the answer an unknown id of the same shape gets (status, headers that
matter, body with the id masked), so there is no existence oracle.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import ids
from gateway.auth import hash_key
from tests.conftest import Gateway, StartGateway
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal

KEYS = {"team-a": "key-for-team-a-123", "team-b": "key-for-team-b-456"}
ADMIN_KEY = "admin-key-for-ops-789"


def two_tenants(tmp_path: Path, **overrides: Any) -> Any:
    auth = {
        "keys": [{"name": n, "key_sha256": hash_key(k)} for n, k in KEYS.items()],
        "admin_key_sha256": hash_key(ADMIN_KEY),
    }
    return make_config(tmp_path, auth=auth, **overrides)


@dataclass
class Owned:
    input_file: str
    output_file: str
    batch: str


async def make_objects(gw: Gateway, key: str) -> Owned:
    client = gw.client.with_options(api_key=key)
    f = await client.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
    batch = await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_terminal(client, batch.id)
    assert done.output_file_id is not None
    return Owned(f.id, done.output_file_id, batch.id)


async def call(gw: Gateway, key: str, method: str, path: str, **kw: Any) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
    async with gw.http.request(method, gw.url(path), headers=headers, **kw) as resp:
        return resp.status, resp.content_type, await resp.text()


OPERATIONS = {
    "files.retrieve": ("GET", "/v1/files/{id}", None),
    "files.content": ("GET", "/v1/files/{id}/content", None),
    "files.delete": ("DELETE", "/v1/files/{id}", None),
    "batches.retrieve": ("GET", "/v1/batches/{id}", None),
    "batches.cancel": ("POST", "/v1/batches/{id}/cancel", None),
    "batches.create(input_file_id)": ("POST", "/v1/batches", "input_file_id"),
}
KINDS = ("input_file", "output_file", "batch")


def unknown_like(object_id: str) -> str:
    return ids.new_batch_id() if object_id.startswith("batch_") else ids.new_file_id()


async def attempt(gw: Gateway, key: str, operation: str, object_id: str) -> tuple[int, str, str]:
    method, path, body_field = OPERATIONS[operation]
    if body_field is None:
        status, ctype, text = await call(gw, key, method, path.format(id=object_id))
    else:
        body = {body_field: object_id, "endpoint": "/v1/chat/completions"}
        body["completion_window"] = "24h"
        status, ctype, text = await call(gw, key, method, path, json=body)
    return status, ctype, text.replace(object_id, "<id>")


@pytest.fixture
async def tenants(start_gateway: StartGateway, tmp_path: Path) -> tuple[Gateway, dict[str, Owned]]:
    gw = await start_gateway(two_tenants(tmp_path), api_key=KEYS["team-a"])
    owned = {name: await make_objects(gw, key) for name, key in KEYS.items()}
    return gw, owned


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_foreign_ids_answer_exactly_like_unknown_ids(
    tenants: tuple[Gateway, dict[str, Owned]], operation: str, kind: str
) -> None:
    gw, owned = tenants
    for owner, intruder in (("team-a", "team-b"), ("team-b", "team-a")):
        foreign = getattr(owned[owner], kind)
        got = await attempt(gw, KEYS[intruder], operation, foreign)
        expected = await attempt(gw, KEYS[intruder], operation, unknown_like(foreign))
        assert got == expected, (owner, intruder)
        assert got[0] == 404
    for name, key in KEYS.items():  # nothing the intruders did changed anything
        status, _, _ = await call(gw, key, "GET", f"/v1/files/{owned[name].input_file}")
        assert status == 200
        status, _, text = await call(gw, key, "GET", f"/v1/batches/{owned[name].batch}")
        assert status == 200 and '"completed"' in text


async def test_lists_show_only_ones_own(tenants: tuple[Gateway, dict[str, Owned]]) -> None:
    gw, owned = tenants
    for name, key in KEYS.items():
        client = gw.client.with_options(api_key=key)
        files = {f.id async for f in client.files.list()}
        assert files == {owned[name].input_file, owned[name].output_file}
        assert [b.id async for b in client.batches.list()] == [owned[name].batch]
    # A foreign cursor is refused exactly like an unknown one.
    a, b = owned["team-a"], owned["team-b"]
    for path, foreign in (("/v1/files", b.input_file), ("/v1/batches", b.batch)):
        got = await call(gw, KEYS["team-a"], "GET", f"{path}?after={foreign}")
        unknown = unknown_like(foreign)
        expected = await call(gw, KEYS["team-a"], "GET", f"{path}?after={unknown}")
        assert got[0] == expected[0] == 400
        assert got[2].replace(foreign, "x") == expected[2].replace(unknown, "x")
    assert a.input_file != b.input_file


async def test_admin_reads_any_tenant_and_nothing_more(
    tenants: tuple[Gateway, dict[str, Owned]],
) -> None:
    gw, owned = tenants
    for name in KEYS:
        as_tenant = {"X-Gateway-Tenant": name}
        status, _, text = await call(gw, ADMIN_KEY, "GET", "/v1/batches", headers=as_tenant)
        assert status == 200 and owned[name].batch in text
        status, _, text = await call(gw, ADMIN_KEY, "GET", "/v1/files", headers=as_tenant)
        assert status == 200 and owned[name].input_file in text
        path = f"/v1/batches/{owned[name].batch}"
        assert (await call(gw, ADMIN_KEY, "GET", path, headers=as_tenant))[0] == 200
        path = f"/v1/files/{owned[name].output_file}"
        assert (await call(gw, ADMIN_KEY, "GET", path, headers=as_tenant))[0] == 200

    as_a = {"X-Gateway-Tenant": "team-a"}
    a = owned["team-a"]
    for method, path in (
        ("GET", f"/v1/files/{a.output_file}/content"),
        ("DELETE", f"/v1/files/{a.input_file}"),
        ("POST", f"/v1/batches/{a.batch}/cancel"),
    ):
        status, _, text = await call(gw, ADMIN_KEY, method, path, headers=as_a)
        assert status == 403 and "admin_read_only" in text, (method, path)
    status, _, text = await call(gw, ADMIN_KEY, "GET", "/v1/files")  # no tenant named
    assert status == 400 and "unknown_tenant" in text
    status, _, _ = await call(gw, ADMIN_KEY, "GET", "/v1/files", headers={"X-Gateway-Tenant": "x"})
    assert status == 400
    # The header means nothing to a tenant key: team-b still sees only its own.
    status, _, text = await call(gw, KEYS["team-b"], "GET", "/v1/files", headers=as_a)
    assert status == 200 and a.input_file not in text
