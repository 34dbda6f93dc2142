"""Per-key limits (rate, active batches, stored bytes), the provider allow-list, open auth."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.auth import exposure_warning, hash_key
from gateway.config import AuthConfig, ConfigError
from gateway.limits import StoreWindow
from gateway.store import open_store
from tests.conftest import StartGateway
from tests.support import chat_file, make_config
from tests.test_flow_sdk import wait_terminal
from tests.test_upload_validation import leftovers

SLOW_SANDBOX = {
    "type": "sandbox",
    "dir": "./sandbox",
    "validate_seconds": 0,
    "line_seconds": 30,
    "finalize_seconds": 0,
    "cancel_seconds": 0,
}


def keyed(tmp_path: Path, *keys: dict[str, Any], **overrides: Any) -> Any:
    for key in keys:
        key.setdefault("key_sha256", hash_key(f"secret-of-{key['name']}"))
    return make_config(tmp_path, auth={"keys": list(keys)}, **overrides)


def client_for(base_url: str, name: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=f"secret-of-{name}", max_retries=0)


async def test_requests_per_minute_gives_429_with_retry_after(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    config = keyed(
        tmp_path, {"name": "tight", "limits": {"requests_per_minute": 3}}, {"name": "free"}
    )
    gw = await start_gateway(config, api_key="secret-of-tight")
    for _ in range(3):
        await gw.client.files.list()
    with pytest.raises(openai.RateLimitError) as info:
        await gw.client.files.list()
    retry_after = int(info.value.response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert info.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    free = client_for(gw.base_url, "free")
    try:
        for _ in range(5):  # other keys have their own budget
            await free.files.list()
    finally:
        await free.close()
    async with gw.http.get(gw.url("/health/live")) as resp:
        assert resp.status == 200  # probes are never limited


async def test_the_window_resets(tmp_path: Path) -> None:
    now = [120.0]
    store = await open_store(f"sqlite:///{tmp_path / 'limits.db'}")
    limiter = StoreWindow(store, clock=lambda: now[0])
    try:
        assert [await limiter.hit("k", 2, 60) for _ in range(2)] == [None, None]
        assert await limiter.hit("k", 2, 60) == 60.0
        now[0] = 179.5
        assert await limiter.hit("k", 2, 60) == pytest.approx(0.5)
        now[0] = 180.0
        assert await limiter.hit("k", 2, 60) is None
    finally:
        await store.close()


async def test_max_active_batches(start_gateway: StartGateway, tmp_path: Path) -> None:
    config = keyed(
        tmp_path,
        {"name": "busy", "limits": {"max_active_batches": 2}},
        providers={"sandbox": SLOW_SANDBOX},
    )
    gw = await start_gateway(config, api_key="secret-of-busy")
    f = await gw.client.files.create(file=("a.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
    make = {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first = await gw.client.batches.create(**make)  # type: ignore[arg-type]
    await gw.client.batches.create(**make)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:
        await gw.client.batches.create(**make)  # type: ignore[arg-type]
    assert info.value.code == "active_batch_limit_exceeded"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len([b async for b in gw.client.batches.list()]) == 2
    await gw.client.batches.cancel(first.id)
    await wait_terminal(gw.client, first.id)
    await gw.client.batches.create(**make)  # type: ignore[arg-type]


async def test_max_bytes_stored(start_gateway: StartGateway, tmp_path: Path) -> None:
    content = chat_file(3)
    config = keyed(tmp_path, {"name": "small", "limits": {"max_bytes_stored": len(content) + 10}})
    gw = await start_gateway(config, api_key="secret-of-small")
    first = await gw.client.files.create(file=("a.jsonl", io.BytesIO(content)), purpose="batch")
    with pytest.raises(openai.RateLimitError) as info:
        await gw.client.files.create(file=("b.jsonl", io.BytesIO(content)), purpose="batch")
    assert info.value.code == "storage_limit_exceeded"
    assert [f.id async for f in gw.client.files.list()] == [first.id]
    assert [p.name for p in leftovers(gw)] == [first.id]
    await gw.client.files.delete(first.id)
    await gw.client.files.create(file=("b.jsonl", io.BytesIO(content)), purpose="batch")


def two_sandboxes(tmp_path: Path, *keys: dict[str, Any]) -> Any:
    premium = {**SLOW_SANDBOX, "dir": "./premium", "line_seconds": 0}
    return keyed(
        tmp_path,
        *keys,
        providers={"sandbox": {**SLOW_SANDBOX, "line_seconds": 0}, "premium": premium},
        routes=[{"match": {"model": "gpt-4o"}, "to": "premium"}],
    )


async def test_allow_list_drops_providers_the_key_may_not_use(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    config = two_sandboxes(
        tmp_path,
        {"name": "cheap", "providers": ["sandbox"]},
        {"name": "vip", "providers": ["premium"], "allow_provider_header": True},
    )
    gw = await start_gateway(config, api_key="secret-of-cheap")
    wants_premium = await gw.client.files.create(
        file=("a.jsonl", io.BytesIO(chat_file(1, model="gpt-4o"))), purpose="batch"
    )
    batch = await gw.client.batches.create(
        input_file_id=wants_premium.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    record = await gw.service.store.get_batch(batch.id)
    assert record is not None and record.provider == "sandbox"  # the rule's target is dropped

    vip = client_for(gw.base_url, "vip")
    try:
        default_only = await vip.files.create(
            file=("b.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
        )
        create = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
        with pytest.raises(openai.PermissionDeniedError) as info:
            await vip.batches.create(input_file_id=default_only.id, **create)  # type: ignore[arg-type]
        assert info.value.code == "provider_not_allowed"
        with pytest.raises(openai.PermissionDeniedError):
            await vip.batches.create(
                input_file_id=default_only.id,
                extra_headers={"X-Batch-Provider": "sandbox"},
                **create,  # type: ignore[arg-type]
            )
        ok = await vip.batches.create(
            input_file_id=default_only.id,
            extra_headers={"X-Batch-Provider": "premium"},
            **create,  # type: ignore[arg-type]
        )
        record = await gw.service.store.get_batch(ok.id)
        assert record is not None and record.provider == "premium"
        assert [b.id async for b in vip.batches.list()] == [ok.id]  # refusals stored nothing
    finally:
        await vip.close()


def test_allow_list_and_key_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auth.keys.0.providers.0: unknown provider 'nope'"):
        keyed(tmp_path, {"name": "a", "providers": ["nope"]})
    with pytest.raises(ConfigError, match="unique"):
        keyed(tmp_path, {"name": "a"}, {"name": "a", "key_sha256": "0" * 64})
    with pytest.raises(ConfigError, match="admin_key_sha256"):
        make_config(tmp_path, auth={"admin_key_sha256": "not-a-hash"})


def test_open_auth_beyond_loopback_is_warned_about() -> None:
    open_auth = AuthConfig(open=True)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        assert exposure_warning(host, open_auth) is None
    for host in ("0.0.0.0", "::", "", "10.1.2.3", "gateway.internal"):
        warning = exposure_warning(host, open_auth)
        assert warning is not None and "auth.open" in warning
    assert exposure_warning("0.0.0.0", AuthConfig(keys=())) is None


def test_serve_prints_the_warning_at_startup(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("providers: {sandbox: {type: sandbox}}\ndefault: sandbox\n")
    # An unresolvable host: the warning comes first, then the bind fails, so nothing listens.
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        + ["--host", "gateway-test.invalid", "--port", "1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SECURITY: auth.open is true" in result.stderr
    assert "!!!!!!!!" in result.stderr
