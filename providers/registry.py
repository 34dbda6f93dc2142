"""`type:` in config.yaml -> the adapter that implements it."""

from __future__ import annotations

from gateway.config import OpenAIProviderConfig, SandboxProviderConfig
from providers.base import ALL_ENDPOINTS, Provider
from providers.openai_compat import OpenAICompatProvider
from providers.sandbox import SandboxProvider

ProviderConfig = SandboxProviderConfig | OpenAIProviderConfig


def build_provider(name: str, config: ProviderConfig) -> Provider:
    endpoints = frozenset(config.endpoints or ALL_ENDPOINTS)
    if isinstance(config, SandboxProviderConfig):
        return SandboxProvider(
            name,
            directory=config.dir,
            endpoints=endpoints,
            validate_seconds=config.validate_seconds,
            line_seconds=config.line_seconds,
            finalize_seconds=config.finalize_seconds,
            cancel_seconds=config.cancel_seconds,
        )
    assert config.api_key is not None
    return OpenAICompatProvider(
        name,
        endpoints,
        base_url=config.base_url,
        api_key=config.api_key.get_secret_value(),
        connect_timeout=config.connect_timeout_seconds,
        read_timeout=config.read_timeout_seconds,
    )
