"""Config for the anthropic and emulated provider types, and what the registry builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.blobs import LocalBlobs
from gateway.config import ConfigError, parse_config
from providers.anthropic import AnthropicProvider, AnthropicProviderConfig
from providers.emulated import EmulatedProvider, EmulatedProviderConfig
from providers.registry import build_provider
from tests.support import MemoryState


def load(tmp_path: Path, **providers: dict[str, Any]) -> dict[str, Any]:
    raw = {"providers": {"sandbox": {"type": "sandbox"}, **providers}, "default": "sandbox"}
    return dict(parse_config(raw, tmp_path).providers)


def test_anthropic_defaults_and_disabled_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_TEST_KEY", raising=False)
    providers = load(
        tmp_path,
        claude={"type": "anthropic", "api_key": "sk-ant-x", "dir": "./anth"},
        nokey={"type": "anthropic", "api_key": "${ANTHROPIC_TEST_KEY}"},
    )
    claude, nokey = providers["claude"], providers["nokey"]
    assert isinstance(claude, AnthropicProviderConfig)
    assert claude.base_url == "https://api.anthropic.com"
    assert claude.anthropic_version == "2023-06-01"
    assert claude.endpoints == ("/v1/chat/completions",)
    assert claude.dir == tmp_path / "anth"
    assert claude.disabled_reason is None
    assert isinstance(nokey, AnthropicProviderConfig)
    assert nokey.disabled_reason == "api_key is not set (ANTHROPIC_TEST_KEY)"
    assert nokey.dir == tmp_path / "data" / "anthropic"


def test_anthropic_accepts_only_the_chat_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, c={"type": "anthropic", "api_key": "k", "endpoints": ["/v1/embeddings"]})
    assert "providers.c.anthropic.endpoints" in str(info.value)


def test_emulated_key_is_optional_but_an_unset_variable_disables_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_LLM_KEY", raising=False)
    base = {"type": "emulated", "base_url": "http://127.0.0.1:8000/v1/"}
    providers = load(
        tmp_path,
        local=base,
        optional=base | {"api_key": "${LOCAL_LLM_KEY:-}"},
        missing=base | {"api_key": "${LOCAL_LLM_KEY}"},
    )
    local = providers["local"]
    assert isinstance(local, EmulatedProviderConfig)
    assert local.base_url == "http://127.0.0.1:8000/v1"
    assert local.endpoints == ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")
    assert (local.concurrency, local.completion_window_seconds) == (8, 86_400)
    assert local.dir == tmp_path / "data" / "emulated"
    assert local.disabled_reason is None
    assert providers["optional"].disabled_reason is None
    assert providers["missing"].disabled_reason == "api_key is not set (LOCAL_LLM_KEY)"


async def test_registry_builds_the_new_types(tmp_path: Path) -> None:
    providers = load(
        tmp_path,
        claude={"type": "anthropic", "api_key": "k"},
        local={"type": "emulated", "base_url": "http://127.0.0.1:1/v1", "concurrency": 2},
    )
    claude = build_provider(
        "claude", providers["claude"], state=MemoryState(), blobs=LocalBlobs(tmp_path / "b")
    )
    local = build_provider(
        "local", providers["local"], state=MemoryState(), blobs=LocalBlobs(tmp_path / "b")
    )
    try:
        assert isinstance(claude, AnthropicProvider) and isinstance(local, EmulatedProvider)
        assert claude.supports("/v1/chat/completions") and not claude.supports("/v1/embeddings")
        assert local.supports("/v1/embeddings") and not local.supports("/v1/responses")
        assert local.limits.concurrency == 2
    finally:
        await claude.close()
        await local.close()


# One provider of every registered type, as a user would configure it.
EVERY_TYPE: dict[str, dict[str, Any]] = {
    "sandbox": {"type": "sandbox"},
    "openai": {"type": "openai", "base_url": "https://api.example.invalid/v1", "api_key": "k1"},
    "anthropic": {"type": "anthropic", "api_key": "k2", "default_max_tokens": 512},
    "emulated": {"type": "emulated", "base_url": "http://127.0.0.1:9/v1"},
    "azure": {
        "type": "azure",
        "base_url": "https://contoso.openai.azure.com",
        "api_key": "k3",
        "deployments": {"gpt-4o": "gpt4o-batch"},
    },
    "gemini": {"type": "gemini", "api_key": "k4"},
    "mistral": {"type": "mistral", "api_key": "k5"},
    "together": {"type": "together", "api_key": "k6"},
    "bedrock": {
        "type": "bedrock",
        "region": "us-east-1",
        "input_s3_uri": "s3://my-batch-bucket/bedrock/in/",
        "output_s3_uri": "s3://my-batch-bucket/bedrock/out/",
        "role_arn": "arn:aws:iam::123456789012:role/BedrockBatchInference",
        "models": {"claude-3-5-sonnet": "anthropic.claude-3-5-sonnet-20240620-v1:0"},
    },
    "vertex": {
        "type": "vertex",
        "project": "my-gcp-project",
        "location": "us-central1",
        "gcs_input_prefix": "gs://my-batch-bucket/vertex/in",
        "gcs_output_prefix": "gs://my-batch-bucket/vertex/out",
        "models": {"gemini-flash": "publishers/google/models/gemini-2.5-flash"},
    },
}


def test_every_registered_type_has_an_example_here() -> None:
    """A new provider type shows up in check-config, routing and metrics like the rest:
    adding it to the registry without an example here fails this test."""
    from providers.registry import TYPES

    assert set(EVERY_TYPE) == set(TYPES)


async def test_every_type_is_listed_routed_and_measured_with_no_special_case(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    import yaml

    from gateway import metrics
    from gateway.app import build_providers
    from gateway.store import open_store

    names = {f"my-{kind}": settings for kind, settings in EVERY_TYPE.items()}
    routes = [{"match": {"model": f"{name}-*"}, "to": name} for name in names]
    raw = {"providers": names, "routes": routes, "default": "my-sandbox"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name, settings in names.items():
        line = next(x for x in result.stdout.splitlines() if x.strip().startswith(name + " "))
        assert settings["type"] in line and "[enabled]" in line
        assert f"model={name}-*  ->  {name}" in result.stdout

    config = parse_config(raw, tmp_path)
    store = await open_store(f"sqlite:///{tmp_path / 'gw.db'}")
    try:
        built = build_providers(config, store, LocalBlobs(tmp_path / "blobs"), "me")
        assert set(built) == set(names)
        text = metrics.exposition().decode()
        for name in names:
            assert f'provider="{name}"' in text
        for provider in built.values():
            await provider.close()
    finally:
        await store.close()
