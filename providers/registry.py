"""`type:` in config.yaml -> the adapter that implements it."""

from __future__ import annotations

from gateway.config import (
    AnthropicProviderConfig,
    AnyProviderConfig,
    EmulatedProviderConfig,
    OpenAIProviderConfig,
    SandboxProviderConfig,
)
from providers.anthropic import AnthropicProvider
from providers.base import ALL_ENDPOINTS, Provider
from providers.egress import build_egress
from providers.emulated import EmulatedProvider, Limits
from providers.openai_compat import OpenAICompatProvider
from providers.sandbox import SandboxProvider
from providers.transport import HTTPSettings

HTTPConfig = OpenAIProviderConfig | AnthropicProviderConfig | EmulatedProviderConfig


def _key(config: OpenAIProviderConfig | AnthropicProviderConfig) -> str:
    # The loader disables a provider whose key is missing, so an enabled one has it.
    assert config.api_key is not None
    return config.api_key.get_secret_value()


def _settings(name: str, config: HTTPConfig) -> HTTPSettings:
    """Everything about reaching the upstream, decided once for the adapter to pass on."""
    egress = build_egress(
        name,
        config.base_url,
        proxy=config.proxy,
        ca_file=config.ca_file,
        tls_verify=config.tls_verify,
    )
    return HTTPSettings(
        config.base_url,
        connect_timeout=config.connect_timeout_seconds,
        read_timeout=config.read_timeout_seconds,
        egress=egress,
        transport=config.transport,
    )


def build_provider(name: str, config: AnyProviderConfig) -> Provider:
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
    http = _settings(name, config)
    if isinstance(config, AnthropicProviderConfig):
        return AnthropicProvider(
            name,
            endpoints,
            http,
            api_key=_key(config),
            anthropic_version=config.anthropic_version,
            directory=config.dir,
            default_max_tokens=config.default_max_tokens,
        )
    if isinstance(config, EmulatedProviderConfig):
        return EmulatedProvider(
            name,
            endpoints,
            http,
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            directory=config.dir,
            limits=Limits(
                concurrency=config.concurrency,
                requests_per_minute=config.requests_per_minute,
                tokens_per_minute=config.tokens_per_minute,
                max_retries=config.max_retries,
                retry_backoff_seconds=config.retry_backoff_seconds,
                completion_window_seconds=config.completion_window_seconds,
            ),
        )
    return OpenAICompatProvider(name, endpoints, http, api_key=_key(config))
