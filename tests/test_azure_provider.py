"""The `type: azure` adapter: its translations on Azure's documented examples, its config,
and the whole openai-SDK flow through the gateway against a fake Azure on loopback, in
both URL styles (classic `/openai/...?api-version=`, and `/openai/v1/...`)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.blobs import LocalBlobs
from gateway.config import ConfigError, parse_config
from providers import azure, tokens
from providers.azure import (
    AzureProvider,
    AzureProviderConfig,
    file_state,
    line_translator,
    normalize_batch,
)
from providers.base import BatchRequest, InputFile, ProviderError
from providers.lines import LineError
from providers.openai_compat import parse_batch
from providers.registry import build_provider
from providers.transport import HTTPSettings
from tests.conftest import Gateway, StartGateway
from tests.fakes.azure_upstream import (
    AZURE,
    KEY_REFUSED,
    TOKEN_REFUSED,
    FakeAzureState,
    make_azure_upstream,
)
from tests.leakscan import SCAN
from tests.support import MemoryState, chat_file, chat_line, jsonl, make_config
from tests.test_flow_sdk import wait_terminal

KEY = "azure-key-0123456789abcdef"
DEPLOYMENT = "contoso-gpt4o-mini-batch"
Servers = Callable[..., Awaitable[TestServer]]
Started = tuple[Gateway, FakeAzureState, TestServer]


# -- translations, on the examples of Azure's docs and its 2024-10-21 spec

DOC_LINE = {
    "custom_id": "task-0",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {
        "model": "gpt-4o-mini",
        "messages": [
            {
                "role": "system",
                "content": "You are an AI assistant that helps people find information.",
            },
            {"role": "user", "content": "When was Microsoft founded?"},
        ],
    },
}


def test_lines_get_the_deployment_and_each_style_its_documented_url() -> None:
    classic = line_translator({"gpt-4o-mini": DEPLOYMENT}, "classic")(DOC_LINE)
    assert classic["body"]["model"] == DEPLOYMENT
    assert classic["url"] == "/chat/completions"  # as the classic docs write it
    assert classic["body"]["messages"] == DOC_LINE["body"]["messages"]
    assert list(classic) == list(DOC_LINE)  # key order kept
    v1 = line_translator({"gpt-4o-mini": DEPLOYMENT}, "v1")(DOC_LINE)
    assert v1["url"] == "/v1/chat/completions" and v1["body"]["model"] == DEPLOYMENT
    unmapped = line_translator({}, "v1")(DOC_LINE)  # a deployment named like its model
    assert unmapped["body"]["model"] == "gpt-4o-mini"
    assert DOC_LINE["body"]["model"] == "gpt-4o-mini"  # the input is not changed


def test_one_deployment_per_file_and_a_model_is_required() -> None:
    translate = line_translator({"gpt-4o": "dep-a", "gpt-4o-2024-08-06": "dep-a"}, "classic")
    translate(chat_line(0, model="gpt-4o"))
    translate(chat_line(1, model="gpt-4o-2024-08-06"))  # another name, same deployment
    with pytest.raises(LineError, match="one deployment per batch"):
        translate(chat_line(2, model="gpt-4o-mini"))
    with pytest.raises(LineError, match="body.model is missing"):
        line_translator({}, "classic")({"custom_id": "x", "body": {"messages": []}})


def test_the_rest_examples_shapes_are_read() -> None:
    """The REST tab's create answer: ISO timestamps, "Validating", null counts."""
    documented = {
        "cancelled_at": None,
        "cancelling_at": None,
        "completed_at": None,
        "completion_window": "24h",
        "created_at": "2024-07-19T17:13:57.2491382+00:00",
        "error_file_id": None,
        "expired_at": None,
        "expires_at": "2024-07-20T17:13:57.1918498+00:00",
        "failed_at": None,
        "finalizing_at": None,
        "id": "batch_fe3f047a-de39-4068-9008-346795bfc1db",
        "in_progress_at": None,
        "input_file_id": "file-21006e70789246658b86a1fc205899a4",
        "errors": None,
        "metadata": None,
        "object": "batch",
        "output_file_id": None,
        "request_counts": {"total": None, "completed": None, "failed": None},
        "status": "Validating",
    }
    batch = parse_batch(normalize_batch(documented))
    assert batch.status == "validating"
    assert batch.timestamps["expires_at"] == 1721495637  # 2024-07-20T17:13:57Z
    assert batch.request_counts is None and batch.errors is None


def test_the_spec_examples_and_the_troubleshooting_example_are_read() -> None:
    listed = {  # get_batches.json (2024-10-21), its one item
        "object": "batch",
        "id": "batch_72a2792ef7d24ba7b82c7fe4a37e379f",
        "endpoint": "/chat/completions",
        "errors": None,
        "input_file_id": "file-b4fa7277f3eb4722ac18b90f46102c3f",
        "completion_window": "24h",
        "status": "completed",
        "output_file_id": "file-f2ddaf43-b48b-46dd-b264-90da10c7a85b",
        "error_file_id": "file-c3b563b0-ebc7-47da-93e3-a2fa694aef0c",
        "created_at": 1646126127,
        "in_progress_at": 1646126130,
        "expires_at": 1646126170,
        "finalizing_at": 1646126134,
        "completed_at": 1646126136,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 500, "completed": 400, "failed": 100},
        "metadata": {"batch_description": "Evaluation job"},
    }
    done = parse_batch(normalize_batch(listed))
    assert done.output_file_id == "file-f2ddaf43-b48b-46dd-b264-90da10c7a85b"
    assert done.request_counts is not None and done.request_counts.failed == 100
    assert done.timestamps["completed_at"] == 1646126136
    failed = {  # the how-to's troubleshooting example; the spec's errors.data is one object
        **listed,
        "status": "failed",
        "failed_at": 1725419955,
        "model": "gpt-4o-2024-08-06",
        "errors": {
            "object": "list",
            "data": {"code": "empty_file", "message": "The input file is empty.", "line": "3"},
        },
    }
    parsed = parse_batch(normalize_batch(failed))
    assert parsed.errors == [
        {"code": "empty_file", "message": "The input file is empty.", "param": None, "line": 3}
    ]
    assert parsed.model is None  # Azure's model is not the client's
    assert parse_batch(normalize_batch({**listed, "output_file_id": ""})).output_file_id is None


def test_file_states() -> None:
    assert file_state({"status": "pending", "id": "file-1"}) == "pending"
    assert file_state({"status": "Processed"}) == "processed"
    assert file_state({"id": "file-1"}) == "processed"  # no status: OpenAI's shape, ready


def adapter(base_url: str = "http://127.0.0.1:9", **options: Any) -> AzureProvider:
    endpoints = frozenset({"/v1/chat/completions"})
    options.setdefault("api_key", KEY)
    return AzureProvider("az", endpoints, HTTPSettings(base_url, transport="aiohttp"), **options)


async def test_error_bodies_map_to_kinds_with_nothing_leaked() -> None:
    az = adapter(deployments={"gpt-4o-mini": DEPLOYMENT})
    try:
        body = {"error": {"code": "401", "message": KEY_REFUSED}}
        refused = az.http_error(401, json.dumps(body).encode(), {})
        assert (refused.kind, refused.code, refused.ambiguous) == ("auth", "401", False)
        token = {"statusCode": 401, "message": TOKEN_REFUSED}
        bearer = az.http_error(401, json.dumps(token).encode(), {})
        assert bearer.kind == "auth" and "https://" not in bearer.message
        assert bearer.message.startswith("Unauthorized. Access token is missing")
        quota = {"error": {"code": "token_limit_exceeded", "message": "Enqueued token limit."}}
        full = az.http_error(400, json.dumps(quota).encode(), {})
        assert (full.kind, full.ambiguous) == ("retryable", False)
        missing = {
            "error": {
                "code": "notFound",
                "message": f"Batch batch_e0a7ee28-82c4-46a2-a3a0-c13b3c4e390b for {DEPLOYMENT}"
                " not found (request 660b7424-b648-4b67-addc-862ba067d442).",
            }
        }
        gone = az.http_error(404, json.dumps(missing).encode(), {})
        assert gone.kind == "not_found"
        assert "e0a7ee28" not in gone.message and "660b7424" not in gone.message
        assert DEPLOYMENT not in gone.message and "[deployment]" in gone.message
        rate = {"error": {"code": "429", "message": "Please go here: https://aka.ms/oai/x"}}
        slow = az.http_error(429, json.dumps(rate).encode(), {"retry-after": "7"})
        assert (slow.kind, slow.retry_after) == ("retryable", 7.0) and "aka.ms" not in slow.message
    finally:
        await az.close()


# -- config


def load(tmp_path: Path, **providers: dict[str, Any]) -> dict[str, Any]:
    raw = {"providers": {"sandbox": {"type": "sandbox"}, **providers}, "default": "sandbox"}
    return dict(parse_config(raw, tmp_path).providers)


def test_config_defaults_and_key_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_TEST_KEY", raising=False)
    base = {"type": "azure", "base_url": "https://contoso.openai.azure.com/"}
    providers = load(
        tmp_path, az=base | {"api_key": KEY}, off=base | {"api_key": "${AZURE_TEST_KEY}"}
    )
    az = providers["az"]
    assert isinstance(az, AzureProviderConfig)
    assert (az.api_style, az.version(), az.auth) == ("classic", "2024-10-21", "key")
    assert az.base_url == "https://contoso.openai.azure.com" and az.disabled_reason is None
    assert providers["off"].disabled_reason == "api_key is not set (AZURE_TEST_KEY)"
    # Like every keyed type, no key at all disables it; Entra ID needs none.
    assert load(tmp_path, az=base)["az"].disabled_reason == "api_key is not set (empty)"
    v1 = load(tmp_path, az=base | {"api_key": KEY, "api_style": "v1"})["az"]
    assert v1.version() is None
    for wrong, message in (
        (
            {"api_key": KEY, "base_url": "https://contoso.openai.azure.com/openai"},
            "without /openai",
        ),
        ({"auth": "entra", "api_key": KEY}, "not both"),
        ({"api_key": KEY, "deployments": {"gpt-4o": ""}}, "non-empty"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(tmp_path, az=base | wrong)


def test_entra_needs_azure_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entra = {"type": "azure", "base_url": "https://contoso.openai.azure.com", "auth": "entra"}
    monkeypatch.setattr(azure, "entra_available", lambda: False)
    with pytest.raises(ConfigError, match="azure-identity"):
        load(tmp_path, az=entra)
    monkeypatch.setattr(azure, "entra_available", lambda: True)
    config = load(tmp_path, az=entra)["az"]
    assert config.auth == "entra" and config.disabled_reason is None


# -- the gateway with an Azure provider, through the openai SDK


@pytest.fixture
async def start_azure(
    start_gateway: StartGateway, aiohttp_server: Servers, tmp_path: Path
) -> Callable[..., Awaitable[Started]]:
    async def start(
        *,
        provider: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
        **fake: Any,
    ) -> Started:
        fake = {"api_key": KEY, "deployments": frozenset({DEPLOYMENT}), **fake}
        server = await aiohttp_server(make_azure_upstream(**fake))
        options = {
            "type": "azure",
            "base_url": str(server.make_url("")),
            "api_key": KEY,
            "api_style": fake.get("api_style", "classic"),
            "deployments": {"gpt-4o-mini": DEPLOYMENT},
            "retry_backoff_seconds": 0,
            **(provider or {}),
        }
        SCAN.register(options["api_key"], "the azure provider's api_key")
        SCAN.register(options["base_url"].rstrip("/"), "the azure upstream URL")
        SCAN.register(DEPLOYMENT, "the azure deployment name")
        config = make_config(tmp_path, providers={"az": options}, default="az", **(gateway or {}))
        return await start_gateway(config), server.app[AZURE], server

    return start


async def upload(gw: Gateway, content: bytes) -> str:
    return (
        await gw.client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
    ).id


async def create(gw: Gateway, file_id: str, **extra: Any) -> Any:
    return await gw.client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


def uploaded_lines(state: FakeAzureState) -> list[dict[str, Any]]:
    (upload,) = [f for f in state.files.values() if f["purpose"] == "batch"]
    return [json.loads(raw) for raw in upload["_content"].splitlines()]


@pytest.mark.parametrize(("style", "quirks"), [("classic", True), ("v1", False)])
async def test_whole_flow_in_both_url_styles(
    start_azure: Callable[..., Awaitable[Started]], style: str, quirks: bool
) -> None:
    gw, state, _ = await start_azure(api_style=style, doc_quirks=quirks)
    lines = [chat_line(0), chat_line(1, custom_id="filtered-1"), chat_line(2)]
    file_id = await upload(gw, jsonl(lines))
    batch = await create(gw, file_id, metadata={"team": "research"})
    assert batch.status == "validating" and batch.model == "gpt-4o-mini"

    sent = uploaded_lines(state)
    assert [line["body"]["model"] for line in sent] == [DEPLOYMENT] * 3
    assert {line["url"] for line in sent} == {state.line_url}
    assert [line["custom_id"] for line in sent] == ["req-0", "filtered-1", "req-2"]
    (upstream,) = state.batches.values()
    assert upstream["endpoint"] == "/chat/completions"
    assert upstream["metadata"] == {"team": "research", "gateway_batch_id": batch.id}

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed" and done.created_at == batch.created_at
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (3, 2)
    assert done.output_file_id and done.error_file_id
    assert done.output_file_id.startswith("file-") and done.output_file_id not in state.files
    output = [
        json.loads(x)
        for x in (await gw.client.files.content(done.output_file_id)).text.splitlines()
    ]
    assert [line["custom_id"] for line in output] == ["req-0", "req-2"]
    first = output[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["request_id"].startswith("req_")
    choice = first["response"]["body"]["choices"][0]
    assert choice["message"]["content"] == "answer to req-0"
    assert choice["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    (failed,) = [
        json.loads(x) for x in (await gw.client.files.content(done.error_file_id)).text.splitlines()
    ]
    assert failed["custom_id"] == "filtered-1"
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["code"] == "content_filter"

    # Every call carried the key (never a bearer) and, classic only, the api-version.
    assert set(state.credentials) == {KEY}
    versions = {parse_qs(query).get("api-version", [None])[0] for _, _, query in state.requests}
    assert versions == ({"2024-10-21"} if style == "classic" else {None})
    assert all(path.startswith(state.prefix + "/") for _, path, _ in state.requests)
    assert any(path.endswith("/content") for _, path, _ in state.requests)

    second = await create(gw, file_id)  # the upload is reused
    assert len([f for f in state.files.values() if f["purpose"] == "batch"]) == 1
    cancelled = await gw.client.batches.cancel(second.id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert (await wait_terminal(gw.client, second.id)).status == "cancelled"
    listed = [b.id async for b in gw.client.batches.list()]
    assert listed == [second.id, batch.id]


async def test_a_pending_upload_is_waited_for_and_a_refused_one_is_a_400(
    start_azure: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_azure(pending_polls=3)
    batch = await create(gw, await upload(gw, chat_file(2)))
    file_reads = [p for m, p, _ in state.requests if m == "GET" and "/files/file-" in p]
    assert len(file_reads) == 4  # three `pending`, then `processed`: only then the create
    assert batch.status == "validating"

    state.file_outcome = "error"
    with pytest.raises(openai.BadRequestError) as info:
        await create(gw, await upload(gw, chat_file(3)))
    message = info.value.message
    assert "Azure did not accept the input file" in message and "line 2 is not valid" in message
    assert "file-" not in message and "[upstream id]" in message
    assert not [f for f in state.files.values() if f["status"] == "error"]  # deleted there


async def test_lines_for_two_deployments_are_refused_before_azure_sees_them(
    start_azure: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_azure(
        provider={"deployments": {"gpt-4o-mini": DEPLOYMENT, "gpt-4o": "other"}}
    )
    content = jsonl([chat_line(0), chat_line(1, model="gpt-4o")])
    with pytest.raises(openai.BadRequestError) as info:
        await create(gw, await upload(gw, content))
    assert "Line 2: model 'gpt-4o' runs on another Azure deployment" in info.value.message
    assert not [f for f in state.files.values() if f["purpose"] == "batch"]  # nothing uploaded


async def test_a_model_without_a_deployment_goes_as_named_and_azure_fails_the_batch(
    start_azure: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_azure(provider={"deployments": {}})
    batch = await create(gw, await upload(gw, chat_file(2)))
    assert {line["body"]["model"] for line in uploaded_lines(state)} == {"gpt-4o-mini"}
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    (error,) = done.errors.data
    assert (error.code, error.line) == ("model_not_found", 1)


async def test_upstream_errors_become_gateway_errors_without_leaks(
    start_azure: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, server = await start_azure(provider={"api_key": "azure-wrong-key-987654321"})
    with pytest.raises(openai.APIStatusError) as info:
        await create(gw, await upload(gw, chat_file(1)))
    assert info.value.status_code == 502
    body = str(info.value.body)
    assert info.value.body["code"] == "upstream_auth_failed"  # type: ignore[index]
    assert "azure-wrong-key" not in body and str(server.make_url("")) not in body
    assert state.credentials == ["azure-wrong-key-987654321"]


async def test_rate_limits_and_quota_refusals_are_retried_then_a_503(
    start_azure: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_azure()
    file_id = await upload(gw, chat_file(2))
    state.token_limit_creates = 1  # Azure's enqueued-token "fail fast": retried
    state.fail_on, state.fail_next = "POST /openai/batches", [429]
    batch = await create(gw, file_id)
    assert len(state.batches) == 1 and batch.status == "validating"
    state.fail_next = [429, 429, 429]
    with pytest.raises(openai.InternalServerError) as info:
        await create(gw, file_id)
    assert info.value.status_code == 503
    assert "aka.ms" not in str(info.value.body) and len(state.batches) == 1
    assert [b.id async for b in gw.client.batches.list()] == [batch.id]


async def test_a_job_azure_keeps_running_past_its_window_is_expired_by_the_gateway(
    start_azure: Callable[..., Awaitable[Started]],
) -> None:
    gw, state, _ = await start_azure(
        never_end=True, gateway={"poller": {"enabled": False, "expiry_grace_seconds": 60}}
    )
    batch = await create(gw, await upload(gw, chat_file(2)))
    assert (await gw.client.batches.retrieve(batch.id)).status == "in_progress"
    (upstream,) = state.batches.values()
    upstream["expires_at"] = int(time.time()) - 120  # Azure keeps it going regardless
    ended = await wait_terminal(gw.client, batch.id)
    assert ended.status == "expired" and ended.expired_at is not None
    assert upstream["status"] in ("cancelling", "cancelled")
    assert any(m == "POST" and p.endswith("/cancel") for m, p, _ in state.requests)


# -- Entra ID, on the adapter (azure-identity is optional; its token source is injected)


async def test_entra_bearer_token_on_every_call_renewed_when_refused_or_expiring(
    aiohttp_server: Servers, tmp_path: Path
) -> None:
    server = await aiohttp_server(
        make_azure_upstream(token="entra-token-2", deployments=frozenset({DEPLOYMENT}))
    )
    state = server.app[AZURE]
    issued: list[str] = []
    # token-1 is refused; token-2 enters the refresh margin 1.5 s after it is issued.
    lifetimes = [3600.0, tokens.REFRESH_SECONDS + 1.5, 3600.0]

    async def token_source() -> tuple[str, float]:
        issued.append(f"entra-token-{len(issued) + 1}")
        return issued[-1], time.time() + lifetimes[len(issued) - 1]

    az = adapter(
        str(server.make_url("")),
        api_key=None,
        token_source=token_source,
        deployments={"gpt-4o-mini": DEPLOYMENT},
    )
    file = input_file(tmp_path, chat_file(2))
    try:
        with pytest.raises(ProviderError) as refused:
            await az.upload_file(file)
        assert refused.value.kind == "auth" and "https://" not in refused.value.message
        file_id = await az.upload_file(file)  # a refused token is not used again
        await az.create_batch(
            BatchRequest(file_id, "/v1/chat/completions", gateway_batch_id="batch_gw1")
        )
        await asyncio.sleep(2)
        state.token = "entra-token-3"
        async with az.open_file_content(file_id) as chunks:
            assert b"".join([c async for c in chunks]) == state.files[file_id]["_content"]
        found = await az.find_batch("batch_gw1", int(time.time()))
        assert found is not None and found.status == "validating"
    finally:
        await az.close()
    assert issued == ["entra-token-1", "entra-token-2", "entra-token-3"]
    bearers = [c.removeprefix("Bearer ") for c in state.credentials]
    assert bearers == sorted(bearers) and bearers[0] == "entra-token-1"
    assert {"entra-token-2", "entra-token-3"} <= set(bearers)
    assert all(parse_qs(q)["api-version"] == ["2024-10-21"] for _, _, q in state.requests)


def input_file(tmp_path: Path, content: bytes) -> InputFile:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    name = "file-" + "a" * 24 + ".jsonl"
    lines = content.count(b"\n")
    return InputFile(path, name, len(content), lines, "/v1/chat/completions", ("gpt-4o-mini",))


async def test_classic_lookups_read_every_page_whatever_the_order(
    aiohttp_server: Servers, tmp_path: Path
) -> None:
    """The classic lists promise no order: an old batch listed first must not end the search,
    and the files list takes only `purpose`."""
    server = await aiohttp_server(
        make_azure_upstream(api_key=KEY, deployments=frozenset({DEPLOYMENT}), pending_polls=0)
    )
    state = server.app[AZURE]
    az = adapter(str(server.make_url("")), deployments={"gpt-4o-mini": DEPLOYMENT})
    try:
        since = int(time.time())
        file_id = await az.upload_file(input_file(tmp_path, chat_file(1)))
        request = BatchRequest(file_id, "/v1/chat/completions", gateway_batch_id="batch_gw2")
        mine = await az.create_batch(request)
        for _ in range(150):  # more than a page; the newest is listed first, and is old
            other = await az.create_batch(replace(request, gateway_batch_id=None))
        state.batches[other.id]["created_at"] = since - 7200
        found = await az.find_batch("batch_gw2", since)
        assert found is not None and found.id == mine.id
        assert [tag for tag, _ in await az.tagged_batches(since)] == ["batch_gw2"]
        assert await az.tagged_files(since) == [("file-" + "a" * 24, file_id)]
        listed = [q for m, p, q in state.requests if m == "GET" and p == "/openai/files"]
        assert listed == ["purpose=batch&api-version=2024-10-21"]
    finally:
        await az.close()


async def test_default_endpoints_per_style(tmp_path: Path) -> None:
    base = {"type": "azure", "base_url": "https://contoso.openai.azure.com", "api_key": KEY}
    configs = load(
        tmp_path, c=base, v=base | {"api_style": "v1"}, e=base | {"endpoints": ["/v1/embeddings"]}
    )
    built = {
        name: build_provider(name, configs[name], state=MemoryState(), blobs=LocalBlobs(tmp_path))
        for name in ("c", "v", "e")
    }
    try:
        assert built["c"].supports("/v1/chat/completions") and not built["c"].supports(
            "/v1/responses"
        )
        assert built["v"].supports("/v1/responses")
        assert built["e"].supports("/v1/embeddings") and not built["e"].supports(
            "/v1/chat/completions"
        )
    finally:
        for provider in built.values():
            await provider.close()
