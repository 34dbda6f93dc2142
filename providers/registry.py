"""`type:` in config.yaml -> the module that implements it.

Each provider type is one module under `providers/` exposing `TYPE`: its config model and
the function that builds its adapter. Adding a protocol is adding its module here;
`gateway.config` builds the `type:` union from `TYPES`.
"""

from __future__ import annotations

from providers import (
    anthropic,
    azure,
    bedrock,
    emulated,
    gemini,
    mistral,
    openai_compat,
    sandbox,
    together,
    vertex,
)
from providers.base import ALL_ENDPOINTS, Provider
from providers.config import ProviderConfig, RemoteConfig
from providers.context import BlobStore, ProviderContext, ProviderType, StateStore
from providers.egress import build_egress
from providers.transport import HTTPSettings

__all__ = ["TYPES", "build_provider"]

TYPES: dict[str, ProviderType] = {
    module.TYPE.name: module.TYPE
    for module in (
        sandbox,
        openai_compat,
        anthropic,
        emulated,
        azure,
        gemini,
        mistral,
        together,
        bedrock,
        vertex,
    )
}


def _settings(name: str, config: RemoteConfig) -> HTTPSettings:
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


def build_provider(
    name: str, config: ProviderConfig, *, state: StateStore, blobs: BlobStore
) -> Provider:
    """The adapter for one configured provider; `state` and `blobs` are where it keeps
    what it must remember (see `providers.context`)."""
    kind = TYPES[config.type]
    context = ProviderContext(
        name=name,
        endpoints=frozenset(config.endpoints or ALL_ENDPOINTS),
        state=state,
        blobs=blobs,
        http=_settings(name, config) if isinstance(config, RemoteConfig) else None,
    )
    return kind.build(context, config)
