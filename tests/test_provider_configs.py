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
